"""`benchmarks/eval_fib.py` on a volume other than the gala layout: HDF5 files with their own
dataset names, 16-bit raw, another voxel size, no boundary map (baseline b skipped)."""

from __future__ import annotations

import importlib.util
import json

import h5py
import numpy as np
import pytest

from .conftest import REPO

GALA = REPO / "examples" / "data" / "gala-fib-test"


def _eval_fib():
    spec = importlib.util.spec_from_file_location("eval_fib", REPO / "benchmarks" / "eval_fib.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_other_volume_with_its_own_keys_dtype_and_voxel_size(tmp_path, capsys) -> None:
    with h5py.File(GALA / "test-image.h5") as f:
        raw = f["stack"][:24, :48, :48]
    with h5py.File(GALA / "test-gt.lzf.h5") as f:
        gt = f["stack"][:24, :48, :48]
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f["em/raw"] = raw.astype(np.uint16) * 100 + 500  # 16-bit counts, other contrast
        f["em/labels"] = gt
    out = tmp_path / "result.json"
    code = _eval_fib().main(
        ["--raw", f"{path}:em/raw", "--truth", f"{path}:em/labels",
         "--voxel-size", "12", "12", "12", "--json", str(out)]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert "model " in printed and "raw " in printed and "p1 " not in printed
    result = json.loads(out.read_text())
    assert set(result["methods"]) == {"model", "raw"} and result["intensity_matching"]
    model = result["methods"]["model"]["best_by_cremi"]["cremi_score"]
    assert code == (0 if model < result["methods"]["raw"]["best_by_cremi"]["cremi_score"] else 1)
    assert model < 0.5  # a working model on real FIB-SEM; broken wiring scores far worse
    with pytest.raises(SystemExit, match="no dataset 'em/missing'"):
        _eval_fib().main(["--raw", f"{path}:em/missing", "--truth", f"{path}:em/labels"])
