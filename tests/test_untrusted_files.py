"""Files from elsewhere never run code and never run unverified: checkpoints, models, sidecars."""

from __future__ import annotations

import hashlib
import logging
import pickle
from pathlib import Path

import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.errors import DataError, SyntkError
from synapse_toolkit.models import resolve_model

torch = pytest.importorskip("torch")

MARKER = "syntk-pwned"


class Payload:
    """Unpickling this calls print(MARKER): what an attacker's checkpoint would do."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, (MARKER,))


def _evil_checkpoint(path: Path) -> Path:
    torch.save({"state_dict": {}, "model_config": Payload()}, path, pickle_protocol=2)
    return path


def test_export_refuses_a_pickle_payload(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    evil = _evil_checkpoint(tmp_path / "evil.pt")
    result = CliRunner().invoke(app, ["export", "onnx", str(evil), str(tmp_path / "out.onnx")])
    out, err = capfd.readouterr()
    assert result.exit_code == 1
    assert MARKER not in result.output + out + err
    assert "refusing to load a checkpoint that needs pickle (it asks for" in result.output
    assert not (tmp_path / "out.onnx").exists()


def test_init_checkpoint_is_loaded_safely(tmp_path: Path) -> None:
    from synapse_toolkit.nn.checkpoint import load_state

    with pytest.raises(SyntkError, match="needs pickle"):
        load_state(_evil_checkpoint(tmp_path / "evil.pt"))
    with pytest.raises(SyntkError, match="not a readable torch checkpoint"):
        (tmp_path / "junk.pt").write_bytes(b"\x00" * 10)
        load_state(tmp_path / "junk.pt")
    with pytest.raises(SyntkError, match="not found"):
        load_state(tmp_path / "missing.pt")
    with pytest.raises(SyntkError, match="needs pickle"):  # a plain pickle file too
        (tmp_path / "plain.pt").write_bytes(pickle.dumps(Payload()))
        load_state(tmp_path / "plain.pt")


def _model(tmp_path: Path, content: bytes = b"onnx bytes") -> Path:
    path = tmp_path / "net.onnx"
    path.write_bytes(content)
    return path


def test_unpinned_model_path_is_hashed_and_noted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = _model(tmp_path)
    with caplog.at_level(logging.WARNING, logger="syntk"):
        got = resolve_model("stage x", path=path)
    assert got.pinned_by == "unpinned" and got.sha256 == hashlib.sha256(b"onnx bytes").hexdigest()
    assert "is not pinned" in caplog.text and got.sha256 in caplog.text


def test_flipped_byte_is_caught_by_option_and_sidecar(tmp_path: Path) -> None:
    path = _model(tmp_path)
    good = hashlib.sha256(b"onnx bytes").hexdigest()
    assert resolve_model("s", path=path, sha256=good).pinned_by == "sha256"
    path.with_suffix(".sha256").write_text(f"{good}  net.onnx\n")
    assert resolve_model("s", path=path).pinned_by == "sidecar"
    path.write_bytes(b"onnx bytez")
    with pytest.raises(DataError, match="does not match its sha256"):
        resolve_model("s", path=path)
    with pytest.raises(DataError, match="does not match its sha256"):
        resolve_model("s", path=path, sha256=good)


def test_empty_or_garbled_sidecar_is_one_clear_error(tmp_path: Path) -> None:
    path = _model(tmp_path)
    for text in ("", "   \n", "not-a-hash net.onnx"):
        path.with_suffix(".sha256").write_text(text)
        with pytest.raises(DataError, match=r"net.sha256: not a sha256 sidecar"):
            resolve_model("s", path=path)


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model file .*missing.onnx not found"):
        resolve_model("stage x", path=tmp_path / "missing.onnx")


def test_calcium_detector_checks_its_model_file(tmp_path: Path) -> None:
    """The calcium CNN resolves its file through the same check as every other detector."""
    import numpy as np

    from synapse_toolkit.api import run_stage
    from synapse_toolkit.data import Volume

    path = _model(tmp_path)
    path.with_suffix(".sha256").write_text(f"{hashlib.sha256(b'other').hexdigest()}  net.onnx\n")
    raw = Volume(np.zeros((1, 1, 32, 32), np.float32), voxel_size_nm=(1.0, 1.0, 1.0))
    with pytest.raises(DataError, match=r"stage neurofinder-cnn: .*net.onnx does not match"):
        run_stage("detector", "neurofinder-cnn", {"raw": raw}, {"model_path": str(path)})
