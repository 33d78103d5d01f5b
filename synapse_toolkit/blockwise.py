"""Block iteration for streaming over volumes larger than memory.

A :class:`Block` is plain data (as in daisy): the region to write and the larger region to read
(the write region grown by ``context`` voxels, clipped to the volume). Functions that process
volumes take array-likes and iterate blocks, so the same code can later run on a cluster.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

Slices = tuple[slice, ...]


@dataclass(frozen=True)
class Block:
    """One block: ``write`` region, ``read`` region (with context) and ``inner`` = write
    region expressed relative to the read region."""

    index: tuple[int, ...]
    write: Slices
    read: Slices

    @property
    def inner(self) -> Slices:
        return tuple(
            slice(w.start - r.start, w.stop - r.start)
            for w, r in zip(self.write, self.read, strict=True)
        )

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.write)


def iter_blocks(
    shape: Sequence[int],
    block_shape: Sequence[int],
    context: Sequence[int] | int = 0,
) -> Iterator[Block]:
    """Blocks tiling ``shape`` (last block of each axis may be smaller), C order."""
    if len(shape) != len(block_shape):
        raise ValueError(
            f"shape {tuple(shape)} and block_shape {tuple(block_shape)} differ in ndim"
        )
    ctx = [context] * len(shape) if isinstance(context, int) else list(context)
    starts = [range(0, s, max(1, b)) for s, b in zip(shape, block_shape, strict=True)]
    for idx, origin in enumerate(itertools.product(*starts)):
        write = tuple(
            slice(o, min(o + b, s)) for o, b, s in zip(origin, block_shape, shape, strict=True)
        )
        read = tuple(
            slice(max(0, w.start - c), min(s, w.stop + c))
            for w, c, s in zip(write, ctx, shape, strict=True)
        )
        yield Block(index=(idx,), write=write, read=read)


def count_blocks(shape: Sequence[int], block_shape: Sequence[int]) -> int:
    n = 1
    for s, b in zip(shape, block_shape, strict=True):
        n *= -(-s // max(1, b))
    return n
