"""Tiled prediction over volumes of any size, streamed block by block.

A model maps an input tile ``input_shape`` to an output tile ``output_shape`` (smaller for
valid convolutions; ``context = (input - output) / 2`` voxels each side). Output tiles are laid on
a regular grid covering the volume, neighbouring tiles overlapping by at least ``overlap`` voxels.
Each tile's prediction is multiplied by a blending window normalised so that the windows of all
tiles covering a voxel sum to one; because the tiles form a Cartesian grid, that normalisation
factorises per axis and is computed analytically, so tiles are simply *added* into the output
(numpy, zarr or h5py array, initialised to zero). Input is read per tile (with context, mirrored
at the volume border), so neither input nor output is ever held in memory whole.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

Triple = tuple[int, int, int]
PredictFn = Callable[[np.ndarray], np.ndarray]


def _zyx(values: Sequence[int]) -> Triple:
    z, y, x = (int(v) for v in values)
    return (z, y, x)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start positions of tiles of length ``tile`` covering ``[0, size)`` with ≥ ``overlap``."""
    if size <= tile:
        return [0]
    stride = max(1, tile - overlap)
    n = int(np.ceil((size - tile) / stride)) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - tile, n)})


def _window_1d(length: int, overlap: int) -> np.ndarray:
    """A positive window that ramps linearly over ``overlap`` voxels at both ends."""
    t = np.arange(length, dtype=np.float64)
    ramp = max(1.0, overlap / 2.0 + 0.5)
    return np.clip(np.minimum(t + 0.5, length - t - 0.5) / ramp, 1e-3, 1.0)


def _normalised_windows(size: int, tile: int, starts: list[int], overlap: int) -> list[np.ndarray]:
    """Per tile, its 1D window divided by the sum of all windows at each position (cropped)."""
    win = _window_1d(tile, overlap)
    total = np.zeros(max(size, tile), dtype=np.float64)
    for s in starts:
        total[s : s + tile] += win
    return [(win / total[s : s + tile])[: max(0, min(tile, size - s))] for s in starts]


def _mirror_index(idx: np.ndarray, n: int, mode: str) -> np.ndarray:
    """Map indices outside ``[0, n)`` into it as :func:`numpy.pad` does for the whole axis."""
    if n == 1 or mode == "edge":
        return np.clip(idx, 0, n - 1)
    if mode == "symmetric":
        period = 2 * n
        m = np.mod(idx, period)
        return np.where(m >= n, period - 1 - m, m)
    period = 2 * (n - 1)  # reflect
    m = np.mod(idx, period)
    return np.where(m >= n, period - m, m)


def read_padded(source, box: Sequence[tuple[int, int]], mode: str = "reflect") -> np.ndarray:
    """Read ``source[..., z0:z1, y0:y1, x0:x1]`` where the box may extend outside the volume.

    Outside parts are mirrored exactly as ``numpy.pad(whole_volume, mode)`` would (``reflect``,
    ``symmetric`` or ``edge``), but only the needed region is read.
    """
    spatial = source.shape[-3:]
    if mode not in ("reflect", "symmetric", "edge"):
        raise ValueError(f"pad mode must be reflect, symmetric or edge, got {mode!r}")
    index = [
        _mirror_index(np.arange(a, b), int(n), mode) for (a, b), n in zip(box, spatial, strict=True)
    ]
    if (
        any(b <= a for a, b in box)
        or all((a >= n or b <= 0) for (a, b), n in zip(box, spatial, strict=True))
        or any(b <= 0 or a >= n for (a, b), n in zip(box, spatial, strict=True))
    ):
        raise ValueError(
            f"read box {list(box)} does not intersect volume of shape {tuple(spatial)}"
        )
    lo = [int(i.min()) for i in index]
    hi = [int(i.max()) + 1 for i in index]
    data = np.asarray(source[(Ellipsis, *[slice(a, b) for a, b in zip(lo, hi, strict=True)])])
    for axis, (i, a) in enumerate(zip(index, lo, strict=True)):
        local = i - a
        if not (
            local.size == data.shape[axis - 3] and np.array_equal(local, np.arange(local.size))
        ):
            data = np.take(data, local, axis=data.ndim - 3 + axis)
    return data


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles go for a volume of ``shape``."""

    shape: Triple
    input_shape: Triple
    output_shape: Triple
    overlap: Triple

    @property
    def context(self) -> Triple:
        c = [(i - o) // 2 for i, o in zip(self.input_shape, self.output_shape, strict=True)]
        return (c[0], c[1], c[2])

    def starts(self) -> list[list[int]]:
        return [
            tile_starts(n, t, o)
            for n, t, o in zip(self.shape, self.output_shape, self.overlap, strict=True)
        ]

    def __len__(self) -> int:
        return int(np.prod([len(s) for s in self.starts()]))


def predict_tiled(
    predict: PredictFn,
    source,
    out,
    input_shape: Sequence[int],
    output_shape: Sequence[int],
    *,
    overlap: Sequence[int] | int = 0,
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None,
    pad_mode: str = "reflect",
    progress: Callable[[int], None] | None = None,
) -> None:
    """Predict ``source`` (``(z, y, x)`` or ``(c, z, y, x)``) into ``out`` (``(C, z, y, x)``).

    ``predict`` takes a float32 batch ``(1, c, *input_shape)`` and returns ``(1, C,
    *output_shape)``. ``out`` must be zero-initialised; it is filled by adding blended tiles.
    ``preprocess`` maps a raw read (any dtype) to float32 (default: uint8 → [0, 1]).
    """
    spatial = _zyx(source.shape[-3:])
    if tuple(out.shape[-3:]) != spatial:
        raise ValueError(f"output spatial shape {tuple(out.shape[-3:])} != input {spatial}")
    ov = (overlap,) * 3 if isinstance(overlap, int) else _zyx(overlap)
    grid = TileGrid(spatial, _zyx(input_shape), _zyx(output_shape), ov)
    ctx = grid.context
    starts = grid.starts()
    windows = [
        _normalised_windows(n, t, s, o)
        for n, t, s, o in zip(spatial, grid.output_shape, starts, ov, strict=True)
    ]
    prep = preprocess or _default_preprocess
    for idx in itertools.product(*[range(len(s)) for s in starts]):
        origin = [starts[a][i] for a, i in enumerate(idx)]
        box = [(o - c, o - c + i) for o, c, i in zip(origin, ctx, grid.input_shape, strict=True)]
        x = prep(read_padded(source, box, pad_mode))
        if x.ndim == 3:
            x = x[None]
        y = np.asarray(predict(np.ascontiguousarray(x[None], dtype=np.float32)))[0]
        if tuple(y.shape[1:]) != grid.output_shape:
            raise ValueError(
                f"model returned spatial shape {y.shape[1:]}, expected {grid.output_shape}"
            )
        w = [windows[a][i] for a, i in enumerate(idx)]
        valid = [len(v) for v in w]
        weight = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
        contrib = y[:, : valid[0], : valid[1], : valid[2]] * weight[None].astype(np.float32)
        key = (slice(None), *[slice(o, o + v) for o, v in zip(origin, valid, strict=True)])
        out[key] = np.asarray(out[key]) + contrib.astype(out.dtype)
        if progress is not None:
            progress(1)


def _default_preprocess(x: np.ndarray) -> np.ndarray:
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 255.0
    return x.astype(np.float32)


def flip_tta(
    predict: PredictFn,
    offsets: Sequence[Sequence[int]] | None = None,
    axes: Sequence[int] = (0, 1, 2),
) -> PredictFn:
    """Test-time augmentation: average ``predict`` over all mirrorings along ``axes``.

    For affinity outputs (``offsets`` given, one per output channel), mirroring axis ``a`` turns
    the edge ``(v, v + o)`` into ``(v, v - o)``, so a channel with offset component ``o_a != 0``
    is shifted back by ``|o_a|`` voxels after un-mirroring; the voxels that shift leaves without
    a value are averaged over the remaining variants only. Channels of other outputs (e.g. a
    boundary map, ``offsets=None``) are just un-mirrored.
    """
    import itertools as _it

    combos = [c for r in range(len(axes) + 1) for c in _it.combinations(axes, r)]

    def predict_tta(x: np.ndarray) -> np.ndarray:
        total: np.ndarray | None = None
        count: np.ndarray | None = None
        for flip in combos:
            spatial = tuple(2 + a for a in flip)
            xin = np.ascontiguousarray(np.flip(x, spatial)) if flip else x
            y = np.flip(np.asarray(predict(xin)), spatial) if flip else np.asarray(predict(xin))
            y = y.astype(np.float64)
            valid = np.ones(y.shape, dtype=bool)
            if offsets is not None and flip:
                for c, off in enumerate(offsets):
                    for a in flip:
                        d = abs(int(off[a]))
                        if d == 0:
                            continue
                        ax = 2 + a
                        n = y.shape[ax]
                        src = [slice(None)] * y.ndim
                        dst = [slice(None)] * y.ndim
                        src[0], dst[0] = slice(None), slice(None)
                        src[1] = dst[1] = slice(c, c + 1)
                        src[ax] = slice(0, n - d)
                        dst[ax] = slice(d, n)
                        shifted = np.zeros_like(y[:, c : c + 1])
                        ok = np.zeros_like(valid[:, c : c + 1])
                        local = [slice(None)] * y.ndim
                        local[ax] = slice(d, n)
                        local_src = [slice(None)] * y.ndim
                        local_src[ax] = slice(0, n - d)
                        shifted[tuple(local)] = y[:, c : c + 1][tuple(local_src)]
                        ok[tuple(local)] = valid[:, c : c + 1][tuple(local_src)]
                        y[:, c : c + 1] = shifted
                        valid[:, c : c + 1] = ok
            if total is None:
                total = np.where(valid, y, 0.0)
                count = valid.astype(np.float64)
            else:
                total += np.where(valid, y, 0.0)
                count += valid
        assert total is not None and count is not None  # combos holds the unflipped variant
        return (total / np.maximum(count, 1)).astype(np.float32)

    return predict_tta
