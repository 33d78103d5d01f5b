"""Built-in I/O plugins: CREMI HDF5, zarr and image-stack loaders; CREMI and zarr writers.

Registered through the ``syntk`` entry point ``io`` like any third-party plugin. The readers and
writers themselves are library functions in :mod:`synapse_toolkit.io`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import h5py
from pydantic import Field

from synapse_toolkit import __version__
from synapse_toolkit.data import Annotations, PartnerTable, Volume, WrittenFile
from synapse_toolkit.errors import DataError
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.io.checks import NonFinite, check_loaded
from synapse_toolkit.io.cremi import CremiData, open_cremi_lazy, open_hdf5_file, write_cremi
from synapse_toolkit.io.image_stack import read_image_stack
from synapse_toolkit.io.zarr_io import read_zarr_volumes, write_zarr_volume
from synapse_toolkit.stages import Loader, Placement, Port, StageOptions, Writer

_VOLUME_PORTS: dict[str, Port] = {
    "raw": Port("intensity", "EM intensities (z, y, x)", required=False),
    "neuron_ids": Port("labels", "neuron segmentation ground truth", required=False),
    "clefts": Port("labels", "synaptic cleft labels (background 2^64-1)", required=False),
}


class _PathOptions(StageOptions):
    path: Path | None = Field(None, description="Read this file instead of the pipeline input.")
    require: list[str] = Field(
        default_factory=list, description="Outputs that must be present, e.g. ['raw']."
    )
    nonfinite: NonFinite = Field(
        "error", description="NaN/inf in float raw: 'error', or 'replace' by the mean."
    )


def _source(options: _PathOptions, input_path: Path | None, stage: str) -> Path:
    path = options.path or input_path
    if path is None:
        raise DataError(f"stage {stage}: no input file (set input.path or options.path)")
    return path


def _check_required(found: Mapping[str, Any], required: list[str], path: Path) -> None:
    missing = [r for r in required if r not in found]
    if missing:
        raise DataError(
            f"{path}: missing {', '.join(missing)} (found: {', '.join(found) or 'nothing'})"
        )


class CremiLoader(Loader["CremiLoader.Options"]):
    """Read a CREMI HDF5 file; volumes stay on disk and are read block by block."""

    name: ClassVar[str] = "cremi-hdf5"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "CREMI HDF5 file: raw, neuron_ids, clefts, annotations"
    outputs: ClassVar[Mapping[str, Port]] = {
        **_VOLUME_PORTS,
        "annotations": Port("annotations", "CREMI point annotations", required=False),
        "partners": Port(
            "partners", "ground-truth partner pairs from the annotations", required=False
        ),
    }

    class Options(_PathOptions):
        pass

    _file: h5py.File | None = None

    @classmethod
    def probe(cls, options: Any, input_path: Path | None) -> Mapping[str, Placement]:
        path = options.path or input_path
        if path is None:
            return {}
        with open_hdf5_file(path) as f:
            data = open_cremi_lazy(f, path)
            return {k: Placement.of(v) for k, v in data.volumes().items()}

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        path = _source(self.options, self.context.input_path, self.context.stage_name)
        self._file = open_hdf5_file(path)
        data = open_cremi_lazy(self._file, path)
        out: dict[str, Any] = dict(data.volumes())
        if data.annotations is not None:
            out["annotations"] = data.annotations
            out["partners"] = PartnerTable.from_annotations(data.annotations)
        _check_required(out, self.options.require, path)
        return check_loaded(out, str(path), nonfinite=self.options.nonfinite,
                            context=self.context)  # fmt: skip

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ZarrLoader(Loader["ZarrLoader.Options"]):
    """Read CREMI-layout arrays from a zarr store (``volumes/raw``, ``volumes/labels/...``)."""

    name: ClassVar[str] = "zarr"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "zarr store in CREMI layout"
    outputs: ClassVar[Mapping[str, Port]] = dict(_VOLUME_PORTS)

    class Options(_PathOptions):
        pass

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        path = _source(self.options, self.context.input_path, self.context.stage_name)
        out = read_zarr_volumes(path)
        _check_required(out, self.options.require, path)
        return check_loaded(out, str(path), nonfinite=self.options.nonfinite,
                            context=self.context)  # fmt: skip


class ImageStackLoader(Loader["ImageStackLoader.Options"]):
    """Read a TIFF/PNG stack (a directory, a glob, or a multi-page TIFF) as the raw volume."""

    name: ClassVar[str] = "image-stack"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "TIFF/PNG image stack, one image per section"
    outputs: ClassVar[Mapping[str, Port]] = {"raw": Port("intensity", "the stacked images")}

    class Options(StageOptions):
        path: str | None = Field(None, description="Directory, glob or file; default: the input.")
        voxel_size_nm: tuple[float, float, float] = Field(description="(z, y, x) voxel size in nm.")
        offset_nm: tuple[float, float, float] = Field((0.0, 0.0, 0.0), description="(z, y, x) nm.")
        nonfinite: NonFinite = Field(
            "error", description="NaN/inf in float images: 'error', or 'replace' by the mean."
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        opts = self.options
        source = opts.path or self.context.input_path
        if source is None:
            raise DataError(f"stage {self.context.stage_name}: no input (set options.path)")
        raw = read_image_stack(source, opts.voxel_size_nm, opts.offset_nm)
        return check_loaded({"raw": raw}, str(source), nonfinite=opts.nonfinite,
                            context=self.context)  # fmt: skip


class CremiWriter(Writer["CremiWriter.Options"]):
    """Write volumes, annotations or partners into a CREMI file in the run directory."""

    kind: ClassVar[str] = "writer"
    name: ClassVar[str] = "cremi-hdf5"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "write a CREMI HDF5 file (atomic)"
    inputs: ClassVar[Mapping[str, Port]] = {
        **_VOLUME_PORTS,
        "annotations": Port("annotations", "annotations to write", required=False),
        "partners": Port("partners", "partners, written as CREMI annotations", required=False),
    }
    outputs: ClassVar[Mapping[str, Port]] = {"file": Port("file", "the CREMI file written")}

    class Options(StageOptions):
        filename: str = Field("prediction.hdf", description="File name inside the run directory.")
        annotation_offset_nm: tuple[float, float, float] = Field(
            (0.0, 0.0, 0.0), description="Offset stored on /annotations; locations are relative."
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        opts = self.options
        if "annotations" in inputs and "partners" in inputs:
            raise DataError(
                f"stage {self.context.stage_name}: wire annotations or partners, not both"
            )
        ann: Annotations | None = inputs.get("annotations")
        if "partners" in inputs:
            ann = inputs["partners"].to_annotations(opts.annotation_offset_nm)
        data = CremiData(
            raw=inputs.get("raw"), neuron_ids=inputs.get("neuron_ids"), clefts=inputs.get("clefts"),
            annotations=ann,
        )  # fmt: skip
        target = self.context.run_file(opts.filename)
        write_cremi(target, data, overwrite=True)
        return {"file": WrittenFile(str(target))}


class ZarrWriter(Writer["ZarrWriter.Options"]):
    """Write volumes into a zarr store in the CREMI layout, in the run directory."""

    kind: ClassVar[str] = "writer"
    name: ClassVar[str] = "zarr"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "write volumes to a zarr store (block by block, atomic per array)"
    inputs: ClassVar[Mapping[str, Port]] = dict(_VOLUME_PORTS)
    outputs: ClassVar[Mapping[str, Port]] = {"file": Port("file", "the zarr store written")}

    class Options(StageOptions):
        filename: str = Field("prediction.zarr", description="Store name inside the run directory.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.io.cremi import VOLUME_KEYS

        target = self.context.run_file(self.options.filename)
        for port, vol in inputs.items():
            assert isinstance(vol, Volume)
            write_zarr_volume(target, VOLUME_KEYS[port], vol, overwrite=True)
        return {"file": WrittenFile(str(target))}


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    registry.add_loader(CremiLoader)
    registry.add_loader(ZarrLoader)
    registry.add_loader(ImageStackLoader)
    registry.add_writer(CremiWriter)
    registry.add_writer(ZarrWriter)
