"""The bad-input corpus: every case ends in exit 1 with one `error:` line naming the culprit,
no traceback, no output that passes as complete, and inputs byte-identical afterwards.

All inputs are made on the fly (tiny CREMI files from `conftest.make_cremi_data`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.data import Volume
from synapse_toolkit.io.cremi import write_cremi

from .conftest import make_cremi_data

PIPE = """
name = "bad"
[input]
path = "{input}"
[output]
dir = "{out}"
[run]
block_shape = [8, 64, 64]
[stages.load]
kind = "loader"
plugin = "cremi-hdf5"
options = {{ require = ["raw"] }}
[stages.score]
kind = "scorer"
plugin = "cremi-neurons"
inputs = {{ prediction = "load.neuron_ids", truth = "load.neuron_ids" }}
on_missing_input = "skip"
"""


@dataclass
class Case:
    name: str
    make: Callable[[Path], list[str]]  # builds files in tmp, returns the CLI arguments
    expect: str  # a fragment of the one error line


def _cremi(tmp: Path, name: str = "in.hdf", **changes: object) -> Path:
    d = make_cremi_data()
    for key, value in changes.items():
        setattr(d, key, value)
    return write_cremi(tmp / name, d)


def _pipe(tmp: Path, input_file: Path, extra: str = "", name: str = "p.toml") -> Path:
    cfg = tmp / name
    cfg.write_text(PIPE.format(input=input_file, out=tmp / "run") + extra)
    return cfg


def _run(tmp: Path, input_file: Path, extra: str = "") -> list[str]:
    return ["pipeline", "run", str(_pipe(tmp, input_file, extra)), "-q"]


def _raw(vals: np.ndarray) -> Volume:
    return Volume(vals, (40.0, 4.0, 4.0), (40.0, 0.0, 8.0), "raw")


def _nan_raw(tmp: Path) -> list[str]:
    raw = np.random.default_rng(0).random((6, 40, 50)).astype(np.float32)
    raw[2, 3:8, 4] = np.nan
    raw[4, 0, 0] = np.inf
    return _run(tmp, _cremi(tmp, raw=_raw(raw)))


def _negative_ids(tmp: Path) -> list[str]:
    ids = np.ones((6, 40, 50), np.int64)
    ids[0, 0, 0] = -3
    return _run(tmp, _cremi(tmp, neuron_ids=Volume(ids, (40.0, 4.0, 4.0), (40.0, 0.0, 8.0))))


def _shape_mismatch(tmp: Path) -> list[str]:
    ids = np.ones((6, 40, 49), np.uint64)
    return _run(tmp, _cremi(tmp, neuron_ids=Volume(ids, (40.0, 4.0, 4.0), (40.0, 0.0, 8.0))))


def _voxel_mismatch(tmp: Path) -> list[str]:
    ids = np.ones((6, 40, 50), np.uint64)
    return _run(tmp, _cremi(tmp, neuron_ids=Volume(ids, (50.0, 4.0, 4.0), (40.0, 0.0, 8.0))))


def _truncated_hdf5(tmp: Path) -> list[str]:
    f = _cremi(tmp)
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 3])
    return _run(tmp, f)


def _not_hdf5(tmp: Path) -> list[str]:
    f = tmp / "in.hdf"
    f.write_text("just text\n")
    return _run(tmp, f)


def _directory_for_hdf5(tmp: Path) -> list[str]:
    store = tmp / "in.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    return _run(tmp, store)


def _zero_sections(tmp: Path) -> list[str]:
    f = tmp / "in.hdf"
    with h5py.File(f, "w") as h:
        h.create_dataset("volumes/raw", data=np.zeros((0, 4, 4), np.uint8))
        h["volumes/raw"].attrs["resolution"] = (40.0, 4.0, 4.0)
    return _run(tmp, f)


def _bad_toml(tmp: Path) -> list[str]:
    cfg = tmp / "p.toml"
    cfg.write_text("[input\npath = 1\n")
    return ["pipeline", "validate", str(cfg)]


def _non_utf8_toml(tmp: Path) -> list[str]:
    cfg = tmp / "p.toml"
    cfg.write_bytes(b'name = "caf\xe9"\n')
    return ["pipeline", "validate", str(cfg)]


def _config_is_directory(tmp: Path) -> list[str]:
    (tmp / "conf.toml").mkdir()
    return ["pipeline", "validate", str(tmp / "conf.toml")]


def _zero_block(tmp: Path) -> list[str]:
    cfg = _pipe(tmp, _cremi(tmp))
    cfg.write_text(cfg.read_text().replace("[8, 64, 64]", "[0, 64, 64]"))
    return ["pipeline", "validate", str(cfg)]


def _negative_block(tmp: Path) -> list[str]:
    cfg = _pipe(tmp, _cremi(tmp))
    cfg.write_text(cfg.read_text().replace("[8, 64, 64]", "[8, -1, 64]"))
    return ["pipeline", "validate", str(cfg)]


def _detect_stage(options: str) -> str:
    """An `affinity-unet` stage on the loaded raw with ``options`` (TOML inline-table body)."""
    return f"""
[stages.detect]
kind = "detector"
plugin = "affinity-unet"
inputs = {{ raw = "load.raw" }}
options = {{ {options} }}
"""


def _missing_model_path(tmp: Path) -> list[str]:
    extra = _detect_stage('model_path = "no_such_model.onnx"')
    return ["pipeline", "validate", str(_pipe(tmp, _cremi(tmp), extra))]


def _model_file_is_text(tmp: Path) -> list[str]:
    model = tmp / "mine.onnx"
    model.write_text("not a model\n")
    model.with_suffix(".sha256").write_text(hashlib.sha256(model.read_bytes()).hexdigest() + "\n")
    cfg = _pipe(tmp, _cremi(tmp), _detect_stage(f'model = "{model}"'))
    return ["pipeline", "run", str(cfg), "-q", "--set", f"output.dir={tmp / 'run'}"]


def _checkpoint_is_text(tmp: Path) -> list[str]:
    (tmp / "best.pt").write_text("not a checkpoint\n")
    return ["export", "onnx", str(tmp / "best.pt"), str(tmp / "run" / "out.onnx")]


def _unknown_plugin(tmp: Path) -> list[str]:
    cfg = _pipe(tmp, _cremi(tmp))
    cfg.write_text(cfg.read_text().replace('"cremi-neurons"', '"cremi-neuronz"'))
    return ["pipeline", "validate", str(cfg)]


def _output_dir_is_input(tmp: Path) -> list[str]:
    f = _cremi(tmp)
    return ["pipeline", "run", str(_pipe(tmp, f)), "--set", f"output.dir={f}", "-q"]


def _writer_onto_input(tmp: Path) -> list[str]:
    f = _cremi(tmp)
    extra = """
[stages.write]
kind = "writer"
plugin = "cremi-hdf5"
inputs = { raw = "load.raw" }
options = { filename = "in.hdf" }
"""
    return ["pipeline", "run", str(_pipe(tmp, f, extra)), "--set", f"output.dir={tmp}", "-q"]


def _score_json_onto_input(tmp: Path) -> list[str]:
    t, p = _cremi(tmp, "t.hdf"), _cremi(tmp, "p.hdf")
    return ["score", "batch", "--truth-glob", str(t), "--pred-glob", str(p),
            "--metric", "cremi-neurons", "--json", str(t)]  # fmt: skip


def _score_json_is_directory(tmp: Path) -> list[str]:
    t, p = _cremi(tmp, "t.hdf"), _cremi(tmp, "p.hdf")
    (tmp / "outdir").mkdir()
    return ["score", "batch", "--truth-glob", str(t), "--pred-glob", str(p),
            "--metric", "cremi-neurons", "--json", str(tmp / "outdir")]  # fmt: skip


def _score_negative_ids(tmp: Path) -> list[str]:
    ids = np.ones((6, 40, 50), np.int64)
    ids[3, 3, 3] = -1
    bad = _cremi(tmp, "p.hdf", neuron_ids=Volume(ids, (40.0, 4.0, 4.0), (40.0, 0.0, 8.0)))
    return ["score", "cremi-neurons", str(_cremi(tmp, "t.hdf")), str(bad)]


def _checkpoint_missing(tmp: Path) -> list[str]:
    return ["export", "onnx", str(tmp / "nope.pt"), str(tmp / "out.onnx")]


def _output_under_a_file(tmp: Path) -> list[str]:
    (tmp / "notes.txt").write_text("the user's notes\n")
    return ["phantom", "em", str(tmp / "notes.txt" / "phantom.h5")]


def _score_csv_under_a_file(tmp: Path) -> list[str]:
    t, p = _cremi(tmp, "t.hdf"), _cremi(tmp, "p.hdf")
    return ["score", "batch", "--truth-glob", str(t), "--pred-glob", str(p),
            "--metric", "cremi-neurons", "--csv", str(t / "scores.csv")]  # fmt: skip


def _plain_folder_as_zarr(tmp: Path) -> list[str]:
    t = _cremi(tmp, "t.hdf")
    (tmp / "pred.zarr").mkdir()
    return ["score", "cremi-neurons", str(tmp / "pred.zarr"), str(t)]


def _output_dir_holds_user_files(tmp: Path) -> list[str]:
    (tmp / "mine").mkdir()
    (tmp / "mine" / "prediction.hdf").write_text("the user's own file\n")
    cfg = _pipe(tmp, _cremi(tmp))
    return ["pipeline", "run", str(cfg), "-q", "--set", f"output.dir={tmp / 'mine'}"]


def _report_manifest_not_an_object(tmp: Path) -> list[str]:
    (tmp / "run").mkdir()
    (tmp / "run" / "manifest.json").write_text("[]\n")
    return ["report", str(tmp / "run")]


def _pairs_manifest_binary(tmp: Path) -> list[str]:
    (tmp / "pairs.csv").write_bytes(b"\x89HDF\r\n\x1a\n\xff\xfe")
    return ["score", "batch", "--manifest", str(tmp / "pairs.csv")]


def _export_onto_existing(tmp: Path) -> list[str]:
    (tmp / "best.pt").write_bytes(b"PK")  # never read: the destination is checked first
    (tmp / "mine.onnx").write_text("the user's model\n")
    return ["export", "onnx", str(tmp / "best.pt"), str(tmp / "mine.onnx")]


def _adapt_out_is_its_model(tmp: Path) -> list[str]:
    (tmp / "mine.onnx").write_text("the user's model\n")
    (tmp / "raw.h5").write_bytes(b"")
    return ["adapt", "affinities", "--model", str(tmp / "mine.onnx"), "--unlabelled",
            f"{tmp / 'raw.h5'}:raw", "--out", str(tmp / "mine.onnx")]  # fmt: skip


def _train_config(tmp: Path, **training: object) -> list[str]:
    from tests.tiny_training import training_toml, write_small_volume

    h5 = write_small_volume(tmp / "vol.h5")
    cfg = tmp / "train.toml"
    cfg.write_text(training_toml(h5, tmp / "run", {"iterations": 1, **training}))
    return ["train", "affinities", str(cfg)]


def _train_negative_lr(tmp: Path) -> list[str]:
    return _train_config(tmp, lr=-1.0)


def _train_onto_an_earlier_run(tmp: Path) -> list[str]:
    args = _train_config(tmp)
    (tmp / "run").mkdir()
    (tmp / "run" / "latest.pt").write_bytes(b"an earlier run's checkpoint")
    return args


def _train_raw_is_2d(tmp: Path) -> list[str]:
    args = _train_config(tmp)
    with h5py.File(tmp / "vol.h5", "a") as f:
        raw = np.asarray(f["raw"][0])
        del f["raw"]
        f["raw"] = raw
    return args


def _train_crop_larger_than_volume(tmp: Path) -> list[str]:
    return _train_config(tmp, input_shape=[14, 280, 280])


def _score_json_and_csv_one_file(tmp: Path) -> list[str]:
    t, p = _cremi(tmp, "t.hdf"), _cremi(tmp, "p.hdf")
    return ["score", "batch", "--truth-glob", str(t), "--pred-glob", str(p), "--metric",
            "cremi-neurons", "--json", str(tmp / "r.out"), "--csv", str(tmp / "r.out")]  # fmt: skip


def _unknown_provider(tmp: Path) -> list[str]:
    cfg = _pipe(tmp, _cremi(tmp), _detect_stage('providers = ["FooExecutionProvider"]'))
    return ["pipeline", "run", str(cfg), "-q", "--set", f"output.dir={tmp / 'run'}"]


def _neurofinder_on_hdf5(tmp: Path) -> list[str]:
    t = _cremi(tmp, "t.hdf")
    return ["score", "neurofinder", str(t), str(t)]


H5VOLUMES = """
name = "bad"
[input]
path = "{input}"
[output]
dir = "{out}"
[stages.load]
kind = "loader"
plugin = "hdf5-volumes"
[stages.load.options]
voxel_size_nm = [10.0, 10.0, 10.0]
volumes = {{ raw = {{ path = "{raw}", dataset = "raw" }} }}
"""


def _h5volumes(tmp: Path, raw: Path) -> list[str]:
    """A pipeline whose hdf5-volumes loader reads dataset ``raw`` of the file ``raw``."""
    cfg = tmp / "v.toml"
    cfg.write_text(H5VOLUMES.format(input=raw, out=tmp / "run", raw=raw))
    return ["pipeline", "run", str(cfg), "-q"]


def _h5volumes_wrong_dataset(tmp: Path) -> list[str]:
    with h5py.File(tmp / "vol.h5", "w") as f:
        f["volumes/raw"] = np.zeros((4, 16, 16), np.uint8)
    return _h5volumes(tmp, tmp / "vol.h5")


def _h5volumes_text_file(tmp: Path) -> list[str]:
    (tmp / "vol.h5").write_text("not HDF5 at all\n")
    return _h5volumes(tmp, tmp / "vol.h5")


def _cluster_train_onto_shipped_encoder(tmp: Path) -> list[str]:
    (tmp / "mine.onnx").write_bytes(b"an encoder the user keeps")
    cfg = tmp / "enc.toml"
    cfg.write_text(f'kind = "cluster-encoder"\n[training]\nout_dir = "{tmp / "run"}"\n'
                   f'[export]\npath = "{tmp / "mine.onnx"}"\n')  # fmt: skip
    return ["train", "cluster-encoder", str(cfg)]


def _synapse_train_onto_a_model(tmp: Path) -> list[str]:
    data = _cremi(tmp, "s.hdf")
    (tmp / "polarity.onnx").write_bytes(b"a model the user keeps")
    cfg = tmp / "pol.toml"
    cfg.write_text(f'kind = "polarity"\n[data]\nfiles = ["{data}"]\n[training]\n'
                   f'iterations = 1\nout_dir = "{tmp / "run"}"\n'
                   f'onnx = "{tmp / "polarity.onnx"}"\n')  # fmt: skip
    return ["train-synapses", "polarity", str(cfg)]


CASES = [
    Case("nan-raw", _nan_raw, "voxels are NaN or infinite"),
    Case("negative-ids", _negative_ids, "negative label id -3"),
    Case("shape-mismatch", _shape_mismatch, "differ in shape"),
    Case("voxel-size-mismatch", _voxel_mismatch, "differ in voxel size"),
    Case("truncated-hdf5", _truncated_hdf5, "in.hdf"),
    Case("not-hdf5", _not_hdf5, "in.hdf"),
    Case("zarr-store-to-hdf5-loader", _directory_for_hdf5, "needs the zarr loader"),
    Case("zero-sections", _zero_sections, "in.hdf"),
    Case("bad-toml", _bad_toml, "invalid TOML"),
    Case("non-utf8-toml", _non_utf8_toml, "not UTF-8"),
    Case("config-is-directory", _config_is_directory, "is a directory"),
    Case("zero-block", _zero_block, "run.block_shape"),
    Case("negative-block", _negative_block, "run.block_shape"),
    Case("missing-model-path", _missing_model_path, "stages.detect.options.model_path"),
    Case("unknown-plugin", _unknown_plugin, "cremi-neuronz"),
    Case("output-dir-is-input", _output_dir_is_input, "is a file, not a directory"),
    Case("writer-onto-input", _writer_onto_input, "refusing to overwrite"),
    Case("score-json-onto-input", _score_json_onto_input, "refusing to overwrite an input"),
    Case("score-json-directory", _score_json_is_directory, "is a directory"),
    Case("score-negative-ids", _score_negative_ids, "negative"),
    Case("checkpoint-missing", _checkpoint_missing, "nope.pt"),
    Case("output-under-a-file", _output_under_a_file, "notes.txt"),
    Case("train-negative-lr", _train_negative_lr, "training.lr"),
    Case("score-json-and-csv-one-file", _score_json_and_csv_one_file, "both name"),
    Case("unknown-provider", _unknown_provider, "FooExecutionProvider"),
    Case("neurofinder-on-hdf5", _neurofinder_on_hdf5, "neurofinder needs regions"),
    Case("train-onto-an-earlier-run", _train_onto_an_earlier_run, "continue it with --resume"),
    Case(
        "cluster-train-onto-an-encoder",
        _cluster_train_onto_shipped_encoder,
        "mine.onnx: file exists; pass --overwrite to replace it",
    ),
    Case(
        "synapse-train-onto-a-model",
        _synapse_train_onto_a_model,
        "polarity.onnx: file exists; pass --overwrite to replace it",
    ),
    Case("train-raw-is-2d", _train_raw_is_2d, "vol.h5:raw: expected a 3D (z, y, x) volume"),
    Case("train-crop-larger-than-volume", _train_crop_larger_than_volume, "does not fit"),
    Case("export-onto-existing", _export_onto_existing, "mine.onnx: file exists; pass --overwrite"),
    Case("adapt-out-is-its-model", _adapt_out_is_its_model, "refusing to overwrite an input"),
    Case("output-dir-holds-user-files", _output_dir_holds_user_files, "prediction.hdf"),
    Case("report-manifest-not-an-object", _report_manifest_not_an_object, "not a syntk run"),
    Case("pairs-manifest-binary", _pairs_manifest_binary, "pairs.csv: cannot read"),
    Case("model-file-is-text", _model_file_is_text, "mine.onnx: cannot load ONNX model"),
    Case("checkpoint-is-text", _checkpoint_is_text, "best.pt: not a readable torch checkpoint"),
    Case("score-csv-under-a-file", _score_csv_under_a_file, "t.hdf"),
    Case("plain-folder-as-zarr", _plain_folder_as_zarr, "pred.zarr: not a zarr group"),
    Case(
        "hdf5-volumes-wrong-dataset",
        _h5volumes_wrong_dataset,
        "hdf5-volumes): volume 'raw': {tmp}/vol.h5 has no dataset 'raw' (has ['volumes/raw'])",
    ),
    Case("hdf5-volumes-text-file", _h5volumes_text_file, "vol.h5: not a readable HDF5 file"),
]


def _snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file() and "run" not in p.relative_to(root).parts
    }


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    args = case.make(tmp_path)
    before = _snapshot(tmp_path)
    result = CliRunner().invoke(app, args)
    err = result.stderr if result.stderr else result.output
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output + err
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert case.expect.format(tmp=tmp_path) in lines[0], lines[0]
    assert _snapshot(tmp_path) == before  # inputs untouched, nothing new outside the run
    manifest = tmp_path / "run" / "manifest.json"
    assert not manifest.exists() or '"status": "complete"' not in manifest.read_text()


def test_nonfinite_replace_runs_and_says_how_many(tmp_path: Path) -> None:
    args = _nan_raw(tmp_path)
    cfg = Path(args[2])
    cfg.write_text(cfg.read_text().replace('require = ["raw"]',
                                           'require = ["raw"], nonfinite = "replace"'))  # fmt: skip
    result = CliRunner().invoke(app, [*args[:-1], "--json"])
    assert result.exit_code == 0, result.output
    import json

    notes = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["load"]["notes"]
    assert notes["nonfinite_replaced"]["voxels"] == 6
    stored = tmp_path / "run" / "artifacts" / "load" / "raw.zarr"
    import zarr

    assert np.isfinite(zarr.open_array(str(stored), mode="r")[:]).all()


def test_corpus_size() -> None:
    assert len(CASES) >= 20


@pytest.mark.parametrize("command", ["run", "validate"])
def test_a_config_error_names_the_config_file(tmp_path: Path, command: str) -> None:
    """A missing key and an unknown plugin: one line with the TOML file and the key."""
    head = 'name = "x"\n[input]\ndataset = "demo/cremi"\n'
    stage = '[stages.a]\nkind = "detector"\nplugin = "nope"\n'
    cases = {"missing.toml": (head + stage, "output: required key is missing"),
             "plugin.toml": (head + '[output]\ndir = "o"\n' + stage,
                             "stages.a.plugin: no detector plugin 'nope'")}  # fmt: skip
    for name, (text, why) in cases.items():
        (tmp_path / name).write_text(text)
        res = CliRunner().invoke(app, ["pipeline", command, str(tmp_path / name)])
        assert res.exit_code == 1
        last = res.output.strip().splitlines()[-1]
        assert last.startswith(f"error: {tmp_path / name}: {why}"), last
