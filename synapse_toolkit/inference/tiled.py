"""Tiled prediction over volumes of any size, streamed block by block.

A model maps an input tile ``input_shape`` to an output tile ``output_shape`` (smaller for
valid convolutions; ``context = (input - output) / 2`` voxels each side). Output tiles are laid on
a regular grid covering the volume, neighbouring tiles overlapping by at least ``overlap`` voxels.
Each tile's prediction is multiplied by a blending window normalised so that the windows of all
tiles covering a voxel sum to one; because the tiles form a Cartesian grid, that normalisation
factorises per axis and is computed analytically, so the output is the sum of the tiles. Input is
read per tile (with context, mirrored at the volume border); a zarr or h5py output is written
block by block, each block once (no read-modify-write of chunks), with only a block buffer and
the tile parts still waiting for later blocks in memory (bounded; spilled to disk beyond a
budget), so neither input nor output is ever held in memory whole.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

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
    block_shape: Sequence[int] | None = None,
    max_cached_bytes: int = 1 << 27,
    scratch_dir: str | os.PathLike[str] | None = None,
) -> None:
    """Predict ``source`` (``(z, y, x)`` or ``(c, z, y, x)``) into ``out`` (``(C, z, y, x)``).

    ``predict`` takes a float32 batch ``(1, c, *input_shape)`` and returns ``(1, C,
    *output_shape)``. ``out`` must be zero-initialised; it receives the sum of the blended tiles.
    ``preprocess`` maps a raw read (any dtype) to float32 (default: uint8 → [0, 1]).

    A numpy ``out`` is added into in place. Any other ``out`` (zarr, h5py) is written block by
    block (``block_shape``, default: its chunks), each block once and whole: the tiles covering
    a block are summed in a block-sized buffer in tile order, so the result equals the numpy
    path bit for bit. Each tile is predicted once; its parts that fall in later blocks wait in
    memory up to ``max_cached_bytes``, beyond that in ``.npy`` files under ``scratch_dir`` (a
    temporary folder by default).
    """
    spatial = _zyx(source.shape[-3:])
    if tuple(out.shape[-3:]) != spatial:
        raise ValueError(f"output spatial shape {tuple(out.shape[-3:])} != input {spatial}")
    ov = (overlap,) * 3 if isinstance(overlap, int) else _zyx(overlap)
    grid = TileGrid(spatial, _zyx(input_shape), _zyx(output_shape), ov)
    starts = grid.starts()
    windows = [
        _normalised_windows(n, t, s, o)
        for n, t, s, o in zip(spatial, grid.output_shape, starts, ov, strict=True)
    ]
    prep = preprocess or _default_preprocess

    def tile(idx: tuple[int, ...]) -> tuple[list[int], np.ndarray]:
        """The tile's origin (voxels) and its blended contribution, cropped to the volume."""
        origin = [starts[a][i] for a, i in enumerate(idx)]
        box = [(o - c, o - c + n) for o, c, n in zip(origin, grid.context, grid.input_shape,
                                                      strict=True)]  # fmt: skip
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
        if progress is not None:
            progress(1)
        return origin, contrib.astype(out.dtype)

    if isinstance(out, np.ndarray):
        for idx in itertools.product(*[range(len(s)) for s in starts]):
            origin, contrib = tile(idx)
            key = (slice(None), *[slice(o, o + n) for o, n in zip(origin, contrib.shape[1:],
                                                                  strict=True)])  # fmt: skip
            out[key] += contrib
        return
    bs = _zyx(block_shape or _spatial_chunks(out, spatial))
    _predict_blocks(tile, out, spatial, bs, starts, windows, max_cached_bytes, scratch_dir)


def _spatial_chunks(out, spatial: Triple) -> Triple:
    chunks = getattr(out, "chunks", None)
    if chunks is None or len(chunks) < 3:
        return (min(spatial[0], 32), min(spatial[1], 256), min(spatial[2], 256))
    return _zyx(chunks[-3:])


class _Parts:
    """Tile parts waiting for their block: in memory up to a budget, then as ``.npy`` files."""

    def __init__(self, max_bytes: int, scratch_dir: str | os.PathLike[str] | None) -> None:
        self.max_bytes = max_bytes
        self.scratch_dir = scratch_dir
        self.held: dict[tuple, np.ndarray] = {}
        self.n_bytes = 0
        self._tmp: tempfile.TemporaryDirectory | None = None

    def put(self, key: tuple, part: np.ndarray) -> None:
        if self.n_bytes + part.nbytes <= self.max_bytes:
            self.held[key] = np.ascontiguousarray(part)
            self.n_bytes += part.nbytes
            return
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="syntk-tiles-", dir=self.scratch_dir)
        np.save(self._path(key), part)

    def pop(self, key: tuple) -> np.ndarray:
        if key in self.held:
            part = self.held.pop(key)
            self.n_bytes -= part.nbytes
            return part
        path = self._path(key)
        part = np.load(path)
        path.unlink()
        return part

    def _path(self, key: tuple) -> Path:
        assert self._tmp is not None
        return Path(self._tmp.name) / ("_".join(str(int(k)) for k in key) + ".npy")

    def close(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


def _predict_blocks(
    tile: Callable[[tuple[int, ...]], tuple[list[int], np.ndarray]],
    out,
    spatial: Triple,
    block_shape: Triple,
    starts: list[list[int]],
    windows: list[list[np.ndarray]],
    max_cached_bytes: int,
    scratch_dir: str | os.PathLike[str] | None,
) -> None:
    """Write ``out`` block by block (C order); see :func:`predict_tiled`."""
    edges = [[*range(0, n, b), n] for n, b in zip(spatial, block_shape, strict=True)]
    # per axis: the tiles meeting each block, and the blocks each tile meets
    tiles_of: list[list[list[int]]] = []
    blocks_of: list[list[list[int]]] = []
    for a in range(3):
        span = [(s, s + len(w)) for s, w in zip(starts[a], windows[a], strict=True)]
        bounds = list(itertools.pairwise(edges[a]))
        tiles_of.append([[i for i, (t0, t1) in enumerate(span) if t0 < b1 and t1 > b0]
                         for b0, b1 in bounds])  # fmt: skip
        blocks_of.append([[b for b, (b0, b1) in enumerate(bounds) if t0 < b1 and t1 > b0]
                          for t0, t1 in span])  # fmt: skip
    parts = _Parts(max_cached_bytes, scratch_dir)
    try:
        for bidx in itertools.product(*[range(len(e) - 1) for e in edges]):
            lo = [edges[a][b] for a, b in enumerate(bidx)]
            hi = [edges[a][b + 1] for a, b in enumerate(bidx)]
            buf = np.zeros((out.shape[0], *np.subtract(hi, lo)), out.dtype)
            for tidx in itertools.product(*[tiles_of[a][b] for a, b in enumerate(bidx)]):
                meets = [blocks_of[a][i] for a, i in enumerate(tidx)]
                if all(m[0] == b for m, b in zip(meets, bidx, strict=True)):  # its first block
                    origin, contrib = tile(tidx)
                    for other in itertools.product(*meets):
                        if other != bidx:
                            parts.put((*tidx, *other), _crop(contrib, origin, other, edges))
                    part = _crop(contrib, origin, bidx, edges)
                else:
                    origin = [starts[a][i] for a, i in enumerate(tidx)]
                    part = parts.pop((*tidx, *bidx))
                at = tuple(max(o, b0) - b0 for o, b0 in zip(origin, lo, strict=True))
                sub = [slice(s, s + n) for s, n in zip(at, part.shape[1:], strict=True)]
                buf[(slice(None), *sub)] += part
            out[(slice(None), *[slice(b0, b1) for b0, b1 in zip(lo, hi, strict=True)])] = buf
    finally:
        parts.close()


def _crop(
    contrib: np.ndarray, origin: list[int], bidx: tuple[int, ...], edges: list[list[int]]
) -> np.ndarray:
    """The part of a tile's contribution that falls in block ``bidx``."""
    key = [slice(None)]
    for a, b in enumerate(bidx):
        lo, hi = edges[a][b], edges[a][b + 1]
        key.append(slice(max(lo - origin[a], 0), min(hi - origin[a], contrib.shape[1 + a])))
    return contrib[tuple(key)]


def _default_preprocess(x: np.ndarray) -> np.ndarray:
    from synapse_toolkit.inference.intensity import unit_scale

    return x.astype(np.float32) * np.float32(unit_scale(x.dtype))


def flip_tta(
    predict: PredictFn,
    offsets: Sequence[Sequence[int]] | None = None,
    axes: Sequence[int] = (0, 1, 2),
    vectors: Sequence[Sequence[int]] = (),
) -> PredictFn:
    """Test-time augmentation: average ``predict`` over all mirrorings along ``axes``.

    For affinity outputs (``offsets`` given, one per output channel), mirroring axis ``a`` turns
    the edge ``(v, v + o)`` into ``(v, v - o)``, so a channel with offset component ``o_a != 0``
    is shifted back by ``|o_a|`` voxels after un-mirroring; the voxels that shift leaves without
    a value are averaged over the remaining variants only. Channels of other outputs (e.g. a
    boundary map, ``offsets=None``) are just un-mirrored. ``vectors``: channel triplets holding a
    vector's (z, y, x) components (e.g. synful's vector to the partner); after un-mirroring,
    the component along each mirrored axis is negated.
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
            for triplet in vectors:
                for a in flip:
                    y[:, int(triplet[a])] *= -1.0
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
