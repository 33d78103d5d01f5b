"""Per-section translation aligner: known shifts, missing/defective sections, point mapping."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.data import Annotations, SectionTransform, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.synapses.alignment import (
    apply_transform,
    estimate_translations,
    phase_correlation,
    transform_annotations,
)

VS = (40.0, 4.0, 4.0)


def _stack(nz: int = 12, n: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """EM-like sections: a membrane-like pattern that drifts slowly along z, plus noise per
    section; labels are the cells of that pattern."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(nz, n, n)), (6.0, 6.0, 6.0), mode="wrap")
    membranes = np.exp(-((field / field.std()) ** 2) * 8)  # dark thin lines at zero crossings
    raw = 0.7 - 0.5 * membranes + rng.normal(0, 0.05, size=field.shape)
    raw = (np.clip(raw, 0, 1) * 255).astype(np.uint8)
    labels = ndimage.label(field > 0)[0].astype(np.uint64)
    return raw, labels


def _misalign(raw: np.ndarray, shifts_px: np.ndarray) -> np.ndarray:
    """Section z displaced by shifts_px[z] (content moves by +shift)."""
    t = SectionTransform(shifts_px * 4.0)
    return apply_transform(raw, t, VS, labels=True)


def test_phase_correlation_finds_known_shift() -> None:
    raw, _ = _stack(2)
    moved = np.roll(raw[0], (5, -7), axis=(0, 1))
    d, q = phase_correlation(raw[0], moved)
    np.testing.assert_allclose(d, [5, -7], atol=0.3)
    assert q > 8


def test_aligner_recovers_shifts_within_one_pixel_despite_bad_sections() -> None:
    raw, _ = _stack(14, 160)
    rng = np.random.default_rng(1)
    true = np.cumsum(rng.integers(-3, 4, size=(14, 2)), axis=0).astype(float)
    true[7] += (15, -12)  # a jump
    bad = _misalign(raw, true)
    bad[4] = 0  # missing section
    bad[10] = rng.integers(0, 255, bad[10].shape)  # defective: pure noise
    t, report = estimate_translations(bad, VS)
    assert 4 in report.skipped and 10 in report.skipped
    est = -t.shifts_nm / 4.0  # estimated content displacement (px), up to a global constant
    good = [z for z in range(14) if z not in (4, 10)]
    err = (est[good] - true[good]) - np.median(est[good] - true[good], axis=0)
    assert np.abs(err).max() <= 1.0
    aligned = apply_transform(bad, t, VS)
    # aligned good sections agree with the original up to the global constant
    c = np.round(np.median(est[good] - true[good], axis=0)).astype(int)
    ref = _misalign(raw, np.tile(-c, (14, 1)).astype(float))
    inner = (slice(None), slice(40, 120), slice(40, 120))
    assert np.mean(aligned[good][inner] == ref[good][inner]) > 0.95


def test_annotations_forward_and_back_land_on_same_voxels() -> None:
    _raw, labels = _stack(10, 96, seed=3)
    vol = Volume(labels, VS, (80.0, 12.0, -8.0))
    shifts = np.random.default_rng(2).integers(-6, 7, size=(10, 2)) * 4.0
    t = SectionTransform(shifts)
    aligned = vol.with_data(apply_transform(labels, t, VS, labels=True))
    rng = np.random.default_rng(5)
    vox = np.stack([rng.integers(0, 10, 40), rng.integers(20, 76, 40), rng.integers(20, 76, 40)], 1)
    world = vol.voxel_to_world(vox)
    ann = Annotations(
        np.arange(40), ("presynaptic_site",) * 40, world - 100.0, offset_nm=(100, 100, 100)
    )
    fwd = transform_annotations(ann, t, vol)
    back = transform_annotations(fwd, t.inverse(), vol)
    np.testing.assert_allclose(back.world_locations(), ann.world_locations(), atol=1e-9)

    def lookup(v: Volume, pts: np.ndarray) -> np.ndarray:
        idx = np.floor(v.world_to_voxel(pts) + 0.5).astype(int)
        return np.asarray(v.data)[tuple(idx.T)]

    # the aligned point sits on the same label in the aligned volume
    np.testing.assert_array_equal(lookup(aligned, fwd.world_locations()), lookup(vol, world))
    # inverse transform of the aligned labels restores the original where defined
    restored = apply_transform(aligned.read(), t.inverse(), VS, labels=True)
    inner = (slice(None), slice(8, -8), slice(8, -8))
    np.testing.assert_array_equal(restored[inner], labels[inner])


def test_transform_must_match_volume() -> None:
    with pytest.raises(DataError, match="sections"):
        apply_transform(np.zeros((3, 8, 8)), SectionTransform(np.zeros((2, 2))), VS)
    with pytest.raises(DataError, match="z, y, x"):
        estimate_translations(np.zeros((8, 8)), VS)


def test_patch_vote_follows_the_majority_not_one_bright_moving_structure() -> None:
    """Most of the section moves by (4, -6); one high-contrast quarter moves by (-10, 9) (an
    oblique neurite). Whole-section correlation follows the bright quarter; the patch vote
    follows the majority."""
    raw, _ = _stack(1, 256)
    ref = raw[0].astype(np.float32)
    ref[:128, :128] = (ref[:128, :128] - 128) * 6 + 128  # the high-contrast structure
    moved = np.roll(ref, (4, -6), axis=(0, 1))
    moved[:128, :128] = np.roll(ref, (-10, 9), axis=(0, 1))[:128, :128]
    whole, _ = phase_correlation(ref, moved, max_shift_px=40)
    voted, _ = phase_correlation(ref, moved, max_shift_px=40, patch_px=64, patch_step_px=32)
    np.testing.assert_allclose(voted, [4, -6], atol=0.5)
    assert np.abs(whole - [4, -6]).max() > 2


def test_sub_pixel_shifts_move_labels_by_whole_pixels_keeping_every_uint64_id() -> None:
    from synapse_toolkit.cremi_ids import NO_LABEL

    lab = np.full((2, 8, 8), 2**60 + 3, np.uint64)
    lab[:, :, 4:] = 5
    t = SectionTransform(np.array([[0.0, 0.0], [4.0 * 1.4, -4.0 * 0.6]]))  # nm at 4 nm pixels
    out = apply_transform(lab, t, (40.0, 4.0, 4.0), labels=True, fill=NO_LABEL)
    assert set(np.unique(out)) == {np.uint64(5), np.uint64(2**60 + 3), np.uint64(NO_LABEL)}
    expected = np.full((8, 8), NO_LABEL, np.uint64)
    expected[1:, :7] = lab[1, :7, 1:]  # rounded: 1 pixel down, 1 pixel left
    assert np.array_equal(out[1], expected) and np.array_equal(out[0], lab[0])
