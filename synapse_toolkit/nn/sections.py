"""Training data from serial-section EM with 2D membrane labels (e.g. ISBI 2012).

Such data labels membrane vs cell pixels section by section. Training an affinity U-Net needs
neuron ids: here the 2D connected components of the cell pixels of each section, linked to the
next section's component when they overlap well (mutual best match by IoU), so that z-affinities
have a target too. Membrane stays label 0 (every affinity touching it is 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from synapse_toolkit.errors import DataError

#: ISBI 2012 / ssTEM voxel size (z, y, x) in nm
ISBI_VOXEL_SIZE_NM = (50.0, 4.0, 4.0)


def _find(parent: dict[int, int], a: int) -> int:
    while parent.setdefault(a, a) != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def link_sections(cells: np.ndarray, min_iou: float = 0.5) -> np.ndarray:
    """uint64 neuron ids from a (z, y, x) cell mask (non-zero = cell, 0 = membrane).

    Each section's 2D components (4-connected) get their own id; a component and one in the next
    section share an id when each is the other's best match by IoU and the IoU is >= ``min_iou``.
    """
    from synapse_toolkit.metrics.sections import section_truth

    comps = section_truth(cells)
    parent: dict[int, int] = {}
    for z in range(comps.shape[0] - 1):
        a, b = comps[z].ravel(), comps[z + 1].ravel()
        both = (a > 0) & (b > 0)
        if not both.any():
            continue
        pairs, inter = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
        ids_a, size_a = np.unique(a[a > 0], return_counts=True)
        ids_b, size_b = np.unique(b[b > 0], return_counts=True)
        sa = size_a[np.searchsorted(ids_a, pairs[0])]
        sb = size_b[np.searchsorted(ids_b, pairs[1])]
        iou = inter / (sa + sb - inter)
        best_a: dict[int, tuple[float, int]] = {}
        best_b: dict[int, tuple[float, int]] = {}
        for u, v, s in zip(pairs[0].tolist(), pairs[1].tolist(), iou.tolist(), strict=True):
            if s > best_a.get(u, (-1.0, 0))[0]:
                best_a[u] = (s, v)
            if s > best_b.get(v, (-1.0, 0))[0]:
                best_b[v] = (s, u)
        for u, (s, v) in best_a.items():
            if s >= min_iou and best_b[v][1] == u:
                parent[_find(parent, v)] = _find(parent, u)
    if not parent:
        return comps
    keys = np.fromiter(parent.keys(), np.uint64)
    roots = np.fromiter((_find(parent, int(k)) for k in keys), np.uint64)
    lut = np.arange(int(comps.max()) + 1, dtype=np.uint64)
    lut[keys.astype(np.int64)] = roots
    return lut[comps]


def read_membrane_stack(
    image_dir: str | Path, label_dir: str | Path, sections: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Raw (z, y, x) uint8 and cell mask (bool) from ``<dir>/<i>.png`` for each section ``i``.

    Labels are ISBI-style: 0 = membrane, non-zero = cell.
    """
    from synapse_toolkit.io.image_stack import _read_image

    raws, cells = [], []
    for i in sections:
        ip, lp = Path(image_dir) / f"{i}.png", Path(label_dir) / f"{i}.png"
        for p in (ip, lp):
            if not p.exists():
                raise DataError(f"{p}: section {i} not found")
        raws.append(_read_image(ip))
        cells.append(_read_image(lp) != 0)
    raw, cell = np.stack(raws), np.stack(cells)
    if raw.shape != cell.shape:
        raise DataError(f"{image_dir}: images {raw.shape} and labels {cell.shape} differ in shape")
    return raw, cell


def write_training_file(
    out: str | Path,
    raw: np.ndarray,
    cells: np.ndarray,
    voxel_size_nm: Sequence[float] = ISBI_VOXEL_SIZE_NM,
    min_iou: float = 0.5,
    source: str = "",
) -> Path:
    """HDF5 with ``raw``, ``neuron_ids`` (linked, :func:`link_sections`) and ``cells`` (mask).

    The file is written to a temporary name and renamed, so it is never left half-written.
    """
    import h5py

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    with h5py.File(tmp, "w") as f:
        for name, data in (
            ("raw", raw),
            ("neuron_ids", link_sections(cells, min_iou)),
            ("cells", cells.astype(np.uint8)),
        ):
            ds = f.create_dataset(name, data=data, compression="gzip")
            ds.attrs["resolution"] = list(voxel_size_nm)
        f.attrs["source"] = source
        f.attrs["voxel_size_nm"] = list(voxel_size_nm)
    tmp.replace(out)
    return out


def _parse_sections(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m synapse_toolkit.nn.sections ISBI_DIR OUT.h5 --sections 0-19``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("isbi_dir", help="folder with image/<i>.png and label/<i>.png")
    ap.add_argument("out", help="HDF5 file to write (raw, neuron_ids, cells)")
    ap.add_argument("--sections", default="0-19", help="e.g. 0-19 or 0-15,18 (default 0-19)")
    ap.add_argument("--min-iou", type=float, default=0.5, help="IoU to link across sections")
    ap.add_argument(
        "--unlinked", action="store_true", help="no links: every 2D component its own id (z = 0)"
    )
    args = ap.parse_args(argv)
    d = Path(args.isbi_dir)
    sections = _parse_sections(args.sections)
    raw, cells = read_membrane_stack(d / "image", d / "label", sections)
    path = write_training_file(
        args.out,
        raw,
        cells,
        min_iou=np.inf if args.unlinked else args.min_iou,
        source=f"{d} sections {args.sections}" + (", unlinked" if args.unlinked else ""),
    )
    print(f"{path}: raw {raw.shape} uint8 at {ISBI_VOXEL_SIZE_NM} nm, sections {args.sections}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
