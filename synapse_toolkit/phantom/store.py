"""Writing EM phantoms (CREMI HDF5 or zarr, block by block) and reading their extra truth.

Besides the CREMI layout (``volumes/raw``, ``volumes/labels/{neuron_ids,clefts}``, ``annotations``)
a phantom carries a ``phantom`` group:

- attribute ``metadata`` (JSON): parameters, defaults version, synapse type prototypes, defects;
- ``synapses/<column>``: one row per synapse (``synapse_id`` = its cleft id, ``type``,
  ``pre_site_id``, ``pre_neuron``, ``n_posts``, ``contact_nm``, ``normal``, ``vesicle_diameter_nm``,
  ``n_vesicles``, ``n_dense_core``, ``cleft_width_nm``, ``cleft_radius_nm``, ``psd_thickness_nm``);
- ``partners``: (M, 5) uint64 rows (synapse_id, pre_site_id, post_site_id, pre_neuron, post_neuron);
- ``misalignment/shifts_px``: (Z, 2) int64 (dy, dx), see :mod:`synapse_toolkit.phantom.artefacts`;
- ``defects/sections`` and ``defects/kinds``.

In zarr stores the annotations and the phantom group are JSON attributes of the groups
``annotations`` and ``phantom`` (zarr has no ragged string arrays).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zarr

from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.io.cremi import VOLUME_KEYS, CremiData, open_cremi, write_cremi
from synapse_toolkit.phantom.em import DEFAULT_BLOCK, EMPhantom
from synapse_toolkit.phantom.render import CLEFT_BACKGROUND

#: Volumes up to this many voxels are rendered in one shot for HDF5 output.
IN_MEMORY_LIMIT = 64 * 1024 * 1024


@dataclass
class PhantomTruth:
    """The phantom-only ground truth of a file."""

    metadata: dict[str, Any]
    synapses: dict[str, np.ndarray]
    partners: np.ndarray
    shifts_px: np.ndarray
    defects: dict[int, str]


def _extras(ph: EMPhantom) -> dict[str, Any]:
    return {
        "metadata": ph.metadata(),
        "synapses": ph.synapse_table(),
        "partners": ph.partner_rows(),
        "shifts_px": ph.shifts.astype(np.int64),
        "defects": dict(ph.defects),
    }


def _write_h5_extras(f: h5py.File, ex: dict[str, Any]) -> None:
    g = f.create_group("phantom")
    g.attrs["metadata"] = json.dumps(ex["metadata"])
    s = g.create_group("synapses")
    for k, v in ex["synapses"].items():
        s.create_dataset(k, data=v)
    g.create_dataset("partners", data=ex["partners"])
    g.create_group("misalignment").create_dataset("shifts_px", data=ex["shifts_px"])
    d = g.create_group("defects")
    d.create_dataset("sections", data=np.asarray(sorted(ex["defects"]), np.int64))
    d.create_dataset("kinds", data=np.asarray([ex["defects"][z] for z in sorted(ex["defects"])],
                                              dtype=object), dtype=h5py.string_dtype())  # fmt: skip


def _tmp_sibling(target: Path, suffix: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=suffix, dir=target.parent))


def _publish(tmp: Path, target: Path, directory: bool) -> None:
    """Give the finished temporary output normal permissions and rename it into place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)
    os.replace(tmp, target)


def _check_target(target: Path, overwrite: bool) -> None:
    if target.exists() and not overwrite:
        raise DataError(f"{target}: already exists (pass --overwrite to replace it)")


def _create_arrays(root: Path, ph: EMPhantom, chunks: tuple[int, int, int]) -> dict[str, Any]:
    vs = list(ph.params.voxel_size_nm)
    arrays = {}
    fills = {"raw": 0, "neuron_ids": 0, "clefts": int(CLEFT_BACKGROUND)}
    dtypes = {"raw": np.uint8, "neuron_ids": np.uint64, "clefts": np.uint64}
    ch = tuple(min(c, s) for c, s in zip(chunks, ph.shape, strict=True))
    for name, key in VOLUME_KEYS.items():
        arr = zarr.create_array(store=str(root), name=key, shape=ph.shape, dtype=dtypes[name],
                                chunks=ch, fill_value=fills[name])  # fmt: skip
        arr.attrs.update({"resolution": vs, "offset": [0.0, 0.0, 0.0]})
        arrays[name] = arr
    return arrays


def _render_into(ph: EMPhantom, arrays: dict[str, Any], block: tuple[int, int, int],
                 progress: Any = None) -> None:  # fmt: skip
    for w, out in ph.iter_blocks(block):
        for name, arr in arrays.items():
            arr[w] = out[name]
        if progress is not None:
            progress(w)


def write_phantom(
    ph: EMPhantom,
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    block_shape: tuple[int, int, int] = DEFAULT_BLOCK,
    progress: Any = None,
) -> Path:
    """Write a phantom: zarr (block by block) if ``path`` ends in ``.zarr``, else CREMI HDF5.

    Large HDF5 outputs are rendered block by block into a temporary zarr store first and then
    streamed through :func:`synapse_toolkit.io.cremi.write_cremi`. Writes are atomic.
    """
    target = Path(path)
    _check_target(target, overwrite)
    if target.suffix == ".zarr":
        return _write_zarr(ph, target, block_shape, progress)
    return _write_h5(ph, target, block_shape, progress)


def _write_h5(ph: EMPhantom, target: Path, block: tuple[int, int, int], progress: Any) -> Path:
    tmpdir = _tmp_sibling(target, ".partial")
    try:
        if int(np.prod(ph.shape)) <= IN_MEMORY_LIMIT:
            data = ph.generate()
        else:
            store = tmpdir / "blocks.zarr"
            arrays = _create_arrays(store, ph, block)
            _render_into(ph, arrays, block, progress)
            data = ph.to_cremi(arrays)
        tmp_file = tmpdir / target.name
        write_cremi(tmp_file, data, block_z=max(1, min(block[0], 16)))
        with h5py.File(tmp_file, "a") as f:
            _write_h5_extras(f, _extras(ph))
        _publish(tmp_file, target, directory=False)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    return target


def _write_zarr(ph: EMPhantom, target: Path, block: tuple[int, int, int], progress: Any) -> Path:
    tmp = _tmp_sibling(target, ".partial.zarr")
    try:
        zarr.open_group(str(tmp), mode="w")
        chunks = (min(block[0], 16), 256, 256)
        arrays = _create_arrays(tmp, ph, chunks)
        _render_into(ph, arrays, block, progress)
        ex = _extras(ph)
        root = zarr.open_group(str(tmp), mode="a")
        root.attrs.update({"file_format": "0.2", "generator": "syntk phantom em"})
        root.create_group("annotations").attrs["annotations"] = ph.annotations().to_dict()
        root.create_group("phantom").attrs.update({
            "metadata": ex["metadata"],
            "synapses": {k: v.tolist() for k, v in ex["synapses"].items()},
            "partners": ex["partners"].tolist(),
            "shifts_px": ex["shifts_px"].tolist(),
            "defects": {str(k): v for k, v in ex["defects"].items()},
        })  # fmt: skip
        if target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        _publish(tmp, target, directory=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


_SYNAPSE_DTYPES = {"synapse_id": np.uint64, "pre_site_id": np.uint64, "pre_neuron": np.uint64,
                   "type": np.int64, "n_posts": np.int64, "n_vesicles": np.int64,
                   "n_dense_core": np.int64}  # fmt: skip


def read_phantom_truth(path: str | os.PathLike[str]) -> PhantomTruth:
    """The ``phantom`` group of a phantom file (HDF5 or zarr)."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: not found")
    try:
        if p.is_dir():
            g = zarr.open_group(str(p), mode="r")["phantom"]
            a: dict[str, Any] = dict(g.attrs)  # JSON, checked by the reads below
            syn = {
                k: np.asarray(v, _SYNAPSE_DTYPES.get(k, np.float64))
                for k, v in a["synapses"].items()
            }
            return PhantomTruth(
                a["metadata"], syn, np.asarray(a["partners"], np.uint64).reshape(-1, 5),
                np.asarray(a["shifts_px"], np.int64).reshape(-1, 2),
                {int(k): v for k, v in a["defects"].items()},
            )  # fmt: skip
        with h5py.File(p, "r") as f:
            g = f["phantom"]
            kinds = [
                k.decode() if isinstance(k, bytes) else str(k) for k in g["defects/kinds"][...]
            ]
            return PhantomTruth(
                json.loads(g.attrs["metadata"]),
                {k: g["synapses"][k][...] for k in g["synapses"]},
                g["partners"][...],
                g["misalignment/shifts_px"][...],
                dict(zip((int(z) for z in g["defects/sections"][...]), kinds, strict=True)),
            )
    except (KeyError, OSError) as exc:
        raise DataError(f"{p}: no phantom ground truth ({exc})") from None


def site_types(path: str | Path, site_ids: np.ndarray) -> np.ndarray:
    """The phantom synapse type of each annotation id (pre or post site) of a phantom file; -1
    for ids it does not know, and for every id of a file without phantom truth."""
    out = np.full(len(site_ids), -1, np.int64)
    try:
        truth = read_phantom_truth(path)
    except DataError:
        return out
    syn = truth.synapses
    of_pre = dict(zip(syn["pre_site_id"].tolist(), syn["type"].tolist(), strict=True))
    of_site = dict(of_pre)
    for _, pre, post, _, _ in truth.partners.tolist():
        if pre in of_pre:
            of_site[post] = of_pre[pre]
    for k, i in enumerate(np.asarray(site_ids, np.uint64).tolist()):
        out[k] = of_site.get(i, -1)
    return out


def _in_memory(v: Volume | None) -> Volume | None:
    return None if v is None else v.with_data(np.asarray(v.data[...]))


def read_phantom(path: str | os.PathLike[str]) -> CremiData:
    """A phantom as CremiData (in memory), from HDF5 or zarr."""
    p = Path(path)
    if not p.is_dir():
        with open_cremi(p) as lazy:
            return CremiData(
                _in_memory(lazy.raw), _in_memory(lazy.neuron_ids), _in_memory(lazy.clefts),
                annotations=lazy.annotations, file_attrs=lazy.file_attrs,
            )  # fmt: skip
    from synapse_toolkit.io.zarr_io import read_zarr_volumes

    vols = read_zarr_volumes(p)
    group = zarr.open_group(str(p), mode="r")
    ann_attrs: dict[str, Any] = dict(group["annotations"].attrs)
    ann = Annotations.from_dict(ann_attrs["annotations"])
    loaded = {k: v.with_data(np.asarray(v.data[...])) for k, v in vols.items()}
    return CremiData(loaded.get("raw"), loaded.get("neuron_ids"), loaded.get("clefts"), ann)
