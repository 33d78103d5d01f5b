"""EM phantom: ground truth self-consistency, determinism, blockwise == one-shot, artefacts,
frozen defaults, the shipped demo volume and the pinned naive baselines."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.data import Annotations
from synapse_toolkit.errors import SyntkError
from synapse_toolkit.io.cremi import read_cremi
from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids
from synapse_toolkit.phantom import store
from synapse_toolkit.phantom.em import EMPhantom
from synapse_toolkit.phantom.params import (
    PHANTOM_DEFAULTS_VERSION,
    SYNAPSE_TYPES,
    EMPhantomParams,
)
from synapse_toolkit.phantom.store import read_phantom, read_phantom_truth, write_phantom

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "synapse_toolkit" / "demo" / "cremi_demo.hdf"
DEMO_SHA256 = "4f2a00561535236e8801da40a17e34f020b8327dfde503ede71de3bd8d7339cb"
VS = np.array([40.0, 4.0, 4.0])


def P(**kw) -> EMPhantomParams:
    """Small test phantoms: less growth margin around the volume (faster)."""
    return EMPhantomParams(margin_nm=(200.0, 300.0, 300.0), **kw)


def _baselines():
    spec = importlib.util.spec_from_file_location(
        "phantom_baselines", ROOT / "benchmarks" / "phantom_baselines.py"
    )
    mod = importlib.util.module_from_spec(spec)
    sys.modules["phantom_baselines"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def small() -> tuple[EMPhantom, dict[str, np.ndarray]]:
    ph = EMPhantom(P(shape=(12, 160, 160), seed=5, n_synapses=8, polyadic_fraction=0.6))
    return ph, ph.render()


def _voxel(loc_nm: np.ndarray) -> tuple[int, ...]:
    return tuple(np.floor(np.asarray(loc_nm) / VS + 0.5).astype(int))


def test_sites_lie_in_their_neurons(small) -> None:
    ph, arr = small
    labels = arr["neuron_ids"]
    ann = ph.annotations()
    rows = ph.partner_rows()
    assert len(ph.synapses) >= 5 and len(rows) == len(ann.partners) >= len(ph.synapses)
    assert any(len(s.contacts) > 1 for s in ph.synapses), "expected a polyadic synapse"
    index = {int(i): k for k, i in enumerate(ann.ids)}
    for sid, pre_id, post_id, pre_neuron, post_neuron in rows:
        pre_loc = ann.locations_nm[index[int(pre_id)]]
        post_loc = ann.locations_nm[index[int(post_id)]]
        assert ann.types[index[int(pre_id)]] == Annotations.PRE
        assert ann.types[index[int(post_id)]] == Annotations.POST
        assert labels[_voxel(pre_loc)] == pre_neuron
        assert labels[_voxel(post_loc)] == post_neuron
        assert pre_neuron != post_neuron
        assert np.linalg.norm(pre_loc - post_loc) < 400.0
        assert f"synapse_id={sid}" in ann.comments[int(pre_id)]


def test_clefts_lie_on_contacts_between_partners(small) -> None:
    ph, arr = small
    labels, clefts = arr["neuron_ids"], arr["clefts"]
    assert clefts.dtype == np.uint64
    assert (clefts == CLEFT_BACKGROUND).mean() > 0.95
    found = set(np.unique(clefts[clefts != CLEFT_BACKGROUND]).tolist())
    assert found == {s.synapse_id for s in ph.synapses}
    for s in ph.synapses:
        mask = clefts == s.synapse_id
        under = set(np.unique(labels[mask]).tolist())
        partners = {s.pre_neuron, *s.post_neurons}
        assert under <= partners and s.pre_neuron in under and len(under) >= 2
        # every cleft voxel is within half a cleft width (<= 5 px in plane, +-1 section) of the
        # other side
        pre = labels == s.pre_neuron
        post = np.isin(labels, s.post_neurons)
        near_post = ndimage.binary_dilation(post, np.ones((3, 11, 11), bool))
        near_pre = ndimage.binary_dilation(pre, np.ones((3, 11, 11), bool))
        inner = np.zeros_like(mask)  # the other side may lie outside the volume at its faces
        inner[1:-1, 5:-5, 5:-5] = True
        assert np.all(near_post[mask & pre & inner]) and np.all(near_pre[mask & post & inner])


def test_vesicle_clouds_on_presynaptic_side(small) -> None:
    ph, arr = small
    labels = arr["neuron_ids"]
    checked = 0
    for s in ph.synapses:
        assert s.n_vesicles > 0
        assert np.all(s.vesicles.neuron == s.pre_neuron)
        assert np.all(ph.field.label_at(s.vesicles.centres) == s.pre_neuron)
        for c in s.vesicles.centres:
            v = _voxel(c)
            if all(0 <= a < n for a, n in zip(v, labels.shape, strict=True)):
                assert labels[v] == s.pre_neuron
                checked += 1
        # the cloud sits behind the pre-synaptic membrane (against the normal)
        depth = (s.vesicles.centres - s.contacts[0].boundary_nm) @ s.contacts[0].normal
        assert np.median(depth) < 0
    assert checked > 20


def test_vesicles_darken_only_the_presynaptic_neuron() -> None:
    ph = EMPhantom(
        P(
            shape=(8, 128, 128),
            seed=1,
            n_synapses=4,
            adherens_per_um3=0.0,
            distractor_vesicle_clusters_per_um3=0.0,
            noise_sigma=0.0,
            blur_sigma_px=0.3,
            texture_amplitude=0.0,
        )
    )
    with_ves = ph.render()["raw"].astype(int)
    from synapse_toolkit.phantom.synapses import Vesicles

    ph.scene.vesicles = Vesicles.empty()
    without = ph.render()["raw"].astype(int)
    labels = ph.render()["neuron_ids"]
    changed = np.abs(with_ves - without) > 8
    assert changed.sum() > 100
    pre = np.isin(labels, [s.pre_neuron for s in ph.synapses])
    assert changed[~pre].sum() < 0.02 * changed.sum()  # only blur spill-over crosses membranes


def test_same_seed_same_bytes_and_seed_matters(tmp_path: Path) -> None:
    p = P(shape=(4, 64, 64), seed=11, n_synapses=2)
    a = write_phantom(EMPhantom(p), tmp_path / "a.h5")
    b = write_phantom(EMPhantom(p), tmp_path / "b.h5")
    assert a.read_bytes() == b.read_bytes()
    other = EMPhantom(p.replace(seed=12)).render()["raw"]
    assert not np.array_equal(other, read_cremi(a).raw.data)


def test_ground_truth_against_itself_is_perfect(small) -> None:
    ph, arr = small
    s = score_neuron_ids(
        arr["neuron_ids"], arr["neuron_ids"], border_threshold_nm=25.0, voxel_size_nm=tuple(VS)
    )
    assert s.voi_split == 0 and s.voi_merge == 0 and s.adapted_rand == 0
    ann = ph.annotations()
    world = ann.world_locations()
    index = {int(i): k for k, i in enumerate(ann.ids)}
    pairs = [(world[index[int(a)]], world[index[int(b)]]) for a, b in ann.partners]
    f = _baselines().partner_fscore(pairs, ann, arr["neuron_ids"], VS)
    assert f["fscore"] == 1.0 and f["fp"] == 0 and f["fn"] == 0


def test_blockwise_equals_one_shot_with_artefacts() -> None:
    ph = EMPhantom(
        P(
            shape=(9, 100, 90),
            seed=4,
            n_synapses=4,
            misalign=True,
            defects=True,
            defective_section_probability=0.3,
        )
    )
    whole = ph.render()
    pieces = {k: np.zeros_like(v) for k, v in whole.items()}
    for w, arr in ph.iter_blocks((5, 61, 50)):
        for k in pieces:
            pieces[k][w] = arr[k]
    for k in whole:
        np.testing.assert_array_equal(pieces[k], whole[k], err_msg=k)


def test_misalignment_shifts_invert_exactly() -> None:
    p = P(shape=(10, 96, 96), seed=8, n_synapses=2, misalign_jump_probability=0.3)
    aligned = EMPhantom(p).render()
    ph = EMPhantom(p.replace(misalign=True))
    moved = ph.render()
    shifts = ph.shifts
    assert shifts.shape == (10, 2) and np.abs(shifts).max() > 0
    np.testing.assert_array_equal(moved["neuron_ids"], aligned["neuron_ids"])
    for z, (dy, dx) in enumerate(shifts):
        ny, nx = 96 - abs(dy), 96 - abs(dx)
        a = aligned["raw"][z, max(0, -dy) : max(0, -dy) + ny, max(0, -dx) : max(0, -dx) + nx]
        m = moved["raw"][z, max(0, dy) : max(0, dy) + ny, max(0, dx) : max(0, dx) + nx]
        np.testing.assert_array_equal(a, m)  # aligned[z, y, x] == raw[z, y + dy, x + dx]


def test_defects_are_recorded_and_rendered(tmp_path: Path) -> None:
    p = P(
        shape=(16, 64, 64),
        seed=2,
        n_synapses=1,
        defects=True,
        missing_section_probability=0.2,
        defective_section_probability=0.3,
    )
    ph = EMPhantom(p)
    raw = ph.render()["raw"]
    assert ph.defects and 0 not in ph.defects and 15 not in ph.defects
    clean = EMPhantom(p.replace(defects=False)).render()["raw"]
    for z in range(16):
        if ph.defects.get(z) == "missing":
            assert not raw[z].any()
        elif z in ph.defects:
            assert not np.array_equal(raw[z], clean[z])
        else:
            np.testing.assert_array_equal(raw[z], clean[z])
    path = write_phantom(ph, tmp_path / "d.h5")
    truth = read_phantom_truth(path)
    assert truth.defects == ph.defects
    np.testing.assert_array_equal(truth.shifts_px, np.zeros((16, 2)))


def test_zarr_and_hdf5_outputs_agree(tmp_path: Path, monkeypatch) -> None:
    ph = EMPhantom(P(shape=(5, 64, 96), seed=3, n_synapses=2, misalign=True))
    z = write_phantom(ph, tmp_path / "p.zarr", block_shape=(4, 64, 64))
    h = write_phantom(ph, tmp_path / "p.h5")
    monkeypatch.setattr(store, "IN_MEMORY_LIMIT", 1000)  # stream the HDF5 through blocks
    hs = write_phantom(ph, tmp_path / "s.h5", block_shape=(4, 64, 64))
    dz, dh, ds = read_phantom(z), read_phantom(h), read_phantom(hs)
    for k in ("raw", "neuron_ids", "clefts"):
        np.testing.assert_array_equal(getattr(dz, k).data, getattr(dh, k).data)
        np.testing.assert_array_equal(getattr(ds, k).data, getattr(dh, k).data)
        assert getattr(dz, k).voxel_size_nm == (40.0, 4.0, 4.0)
    assert dz.annotations.to_dict() == dh.annotations.to_dict()
    tz, th = read_phantom_truth(z), read_phantom_truth(h)
    np.testing.assert_array_equal(tz.shifts_px, ph.shifts)
    np.testing.assert_array_equal(th.shifts_px, ph.shifts)
    np.testing.assert_array_equal(tz.partners, th.partners)
    for key, col in th.synapses.items():
        np.testing.assert_allclose(tz.synapses[key], col)
    assert th.metadata["defaults_version"] == PHANTOM_DEFAULTS_VERSION
    with pytest.raises(SyntkError, match="already exists"):
        write_phantom(ph, h)


def test_bad_parameters_raise() -> None:
    with pytest.raises(SyntkError, match="synapse types"):
        EMPhantomParams(n_types=len(SYNAPSE_TYPES) + 1)
    with pytest.raises(SyntkError, match="shape"):
        EMPhantomParams(shape=(0, 10, 10))


FROZEN_DEFAULTS = {
    "shape": (20, 256, 256),
    "voxel_size_nm": (40.0, 4.0, 4.0),
    "seed": 0,
    "n_synapses": None,
    "synapse_density_per_um3": 18.0,
    "n_types": 3,
    "polyadic_fraction": 0.3,
    "max_posts": 4,
    "min_synapse_distance_nm": 260.0,
    "neurite_radius_median_nm": 80.0,
    "neurite_radius_sigma": 0.5,
    "neurite_radius_range_nm": (40.0, 420.0),
    "fill_fraction": 0.8,
    "branch_probability": 0.012,
    "warp_amplitude_nm": 22.0,
    "margin_nm": (400.0, 700.0, 700.0),
    "membrane_width_nm": 5.5,
    "membrane_intensity": 0.22,
    "membrane_contrast_jitter": 0.35,
    "cytoplasm_range": (0.56, 0.78),
    "mitochondria_per_um3": 9.0,
    "distractor_vesicle_clusters_per_um3": 5.0,
    "adherens_per_um3": 8.0,
    "blur_sigma_px": 1.0,
    "noise_sigma": 0.085,
    "texture_amplitude": 0.07,
    "section_gain_jitter": 0.06,
    "misalign": False,
    "misalign_jitter_px": 1.5,
    "misalign_jump_probability": 0.08,
    "misalign_jump_px": 24,
    "defects": False,
    "missing_section_probability": 0.04,
    "defective_section_probability": 0.06,
    "defaults_version": 1,
}


def test_defaults_are_frozen() -> None:
    """Changing a default changes the benchmark difficulty: bump PHANTOM_DEFAULTS_VERSION,
    regenerate the demo and update docs/phantom.md and this table together."""
    assert PHANTOM_DEFAULTS_VERSION == 1
    d = EMPhantomParams()
    assert {f.name: getattr(d, f.name) for f in fields(d)} == FROZEN_DEFAULTS
    assert [
        (t.vesicle_diameter_nm, t.cleft_width_nm, t.psd_thickness_nm, t.dense_core_count)
        for t in SYNAPSE_TYPES[:3]
    ] == [(45.0, 20.0, 38.0, 0), (35.0, 14.0, 12.0, 0), (40.0, 17.0, 24.0, 5)]


def test_demo_is_the_documented_default_phantom() -> None:
    assert DEMO.stat().st_size <= 10 * 1024 * 1024
    assert hashlib.sha256(DEMO.read_bytes()).hexdigest() == DEMO_SHA256
    demo = read_cremi(DEMO)
    ph = EMPhantom(EMPhantomParams(seed=0))
    assert demo.raw.shape == (20, 256, 256) and len(ph.synapses) == 15
    regenerated = ph.generate()
    for k in ("raw", "neuron_ids", "clefts"):
        np.testing.assert_array_equal(getattr(demo, k).data, getattr(regenerated, k).data)
    assert demo.annotations.to_dict() == regenerated.annotations.to_dict()


def test_naive_baselines_fail_at_the_defaults() -> None:
    """Pinned on the demo volume (seed 0 at the frozen defaults); see docs/phantom.md."""
    b = _baselines()
    data = read_cremi(DEMO)
    table = read_phantom_truth(DEMO).synapses
    res = b.run(data, table, n_types=3, seed=0)
    cremi = res["neurons"]["best"]["cremi_score"]
    f = res["synapses"]["best"]["fscore"]
    ari = res["types"]["ari"]
    assert cremi >= 0.5 and f <= 0.5 and ari < 0.8
    assert cremi == pytest.approx(1.9574, abs=2e-3)
    assert f == pytest.approx(0.1778, abs=2e-3)
    assert ari == pytest.approx(-0.0527, abs=2e-3)


def test_grid_index_is_an_exact_nearest_neighbour_search() -> None:
    from scipy.spatial import cKDTree

    from synapse_toolkit.phantom.nearest import GridIndex

    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform(0, 1000, (3000, 3)), rng.normal(500, 30, (2000, 3))])
    queries = rng.uniform(-600, 1600, (4000, 3))  # many outside the indexed box
    got = GridIndex(pts, 60.0).nearest(queries)
    dist, _ = cKDTree(pts).query(queries)
    np.testing.assert_allclose(np.linalg.norm(pts[got] - queries, axis=1), dist, rtol=0, atol=1e-9)
