"""Models declare their domain; `model = "auto"` picks the affinity model for the input; a
phantom-trained model on a volume that is not a phantom prints one warning line."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.data import Volume
from synapse_toolkit.datasets import get_registry
from synapse_toolkit.domain import (
    choose_model,
    domain_warning,
    input_domain,
    model_domain,
)
from synapse_toolkit.io.cremi import write_cremi

from .conftest import REPO, make_cremi_data

WARNING = "was trained on synthetic phantom volumes only"


def _h5_volume(path: Path, voxel_size: tuple[float, float, float], **attrs: str) -> Volume:
    with h5py.File(path, "w") as f:
        f["raw"] = np.zeros((4, 8, 8), np.uint8)
        f.attrs.update(attrs)
    return Volume(h5py.File(path, "r")["raw"], voxel_size)


@pytest.mark.parametrize(
    ("voxel_size", "attrs", "expected"),
    [
        ((40.0, 4.0, 4.0), {}, "neurons/sstem_affinities"),  # real CREMI-like ssTEM
        ((50.0, 4.0, 4.0), {}, "neurons/sstem_affinities"),  # ISBI
        ((40.0, 4.0, 4.0), {"generator": "syntk phantom em"}, "neurons/phantom_affinities"),
        ((10.0, 10.0, 10.0), {}, "neurons/fib_affinities_v2"),  # isotropic FIB-SEM
        ((8.0, 8.0, 8.0), {}, "neurons/fib_affinities_v2"),
    ],
)
def test_auto_picks_the_model_for_the_input(
    tmp_path: Path, voxel_size: tuple[float, float, float], attrs: dict, expected: str
) -> None:
    dom = input_domain(_h5_volume(tmp_path / "v.h5", voxel_size, **attrs))
    assert dom.phantom == bool(attrs)
    entry, why = choose_model("affinities", dom)
    assert entry.name == expected, why


def test_the_default_fib_model_is_the_one_auto_picks_and_the_stage_default(tmp_path: Path) -> None:
    """One default FIB-SEM model: `syntk evaluate fib` / `syntk adapt`'s, the affinity stage's
    option default and `model = "auto"`'s choice for isotropic EM are the same model."""
    from syntk_neurons.stages import AffinityDetector

    from synapse_toolkit.evaluation.fib import DEFAULT_MODEL

    dom = input_domain(_h5_volume(tmp_path / "v.h5", (10.0, 10.0, 10.0)))
    assert choose_model("affinities", dom)[0].name == DEFAULT_MODEL
    assert AffinityDetector.Options().model == DEFAULT_MODEL


def test_a_phantom_read_into_memory_stays_a_phantom(tmp_path: Path) -> None:
    """read_cremi loads arrays into memory; the file's `generator` attribute goes with them, so
    `model = "auto"` still picks the phantom model (it picked the ssTEM one)."""
    from synapse_toolkit.io.cremi import open_cremi, read_cremi
    from synapse_toolkit.phantom.em import EMPhantom
    from synapse_toolkit.phantom.store import write_phantom

    path = tmp_path / "phantom.h5"
    write_phantom(EMPhantom(seed=5, shape=(4, 32, 32)), path)
    in_memory = read_cremi(path).raw
    assert in_memory is not None and isinstance(in_memory.data, np.ndarray)
    dom = input_domain(in_memory)
    assert dom.phantom and dom.generator == "syntk phantom em"
    assert choose_model("affinities", dom)[0].name == "neurons/phantom_affinities"
    with open_cremi(path) as lazy:
        assert lazy.raw is not None and input_domain(lazy.raw).phantom
    # a volume made from the array alone is not a phantom
    assert not input_domain(Volume(in_memory.data, in_memory.voxel_size_nm)).phantom


def test_in_memory_volume_is_not_a_phantom_and_models_declare_their_domain() -> None:
    dom = input_domain(Volume(np.zeros((2, 4, 4), np.uint8), (40.0, 4.0, 4.0)))
    assert not dom.phantom and dom.modality == "ssTEM"
    reg = get_registry()
    for name, modality, data in [
        ("neurons/sstem_affinities", "ssTEM", "real"),
        ("neurons/phantom_affinities", "phantom", "synthetic"),
        ("neurons/fib_affinities", "FIB-SEM", "real"),
        ("synapses/clefts", "phantom", "synthetic"),
        ("synapses/polarity", "phantom", "synthetic"),
        ("synapses/pruner", "phantom", "synthetic"),
    ]:
        e = reg.get(name)
        assert (e.modality, e.training_data) == (modality, data), name
    # ONNX metadata comes first, the registry fills the gaps
    mdom = model_domain({"modality": "ssTEM"}, reg.get("neurons/phantom_affinities"))
    assert mdom.modality == "ssTEM" and mdom.training_data == "synthetic"
    assert mdom.voxel_size_nm == (40.0, 4.0, 4.0)


def test_warning_only_for_synthetic_models_on_real_input(tmp_path: Path) -> None:
    real = input_domain(_h5_volume(tmp_path / "r.h5", (40.0, 4.0, 4.0)))
    fake = input_domain(
        _h5_volume(tmp_path / "p.h5", (40.0, 4.0, 4.0), generator="syntk phantom em")
    )
    synthetic = model_domain(None, get_registry().get("synapses/clefts"))
    real_model = model_domain(None, get_registry().get("neurons/sstem_affinities"))
    line = domain_warning("clefts", "synapses/clefts", synthetic, real)
    assert line is not None and WARNING in line and "\n" not in line and "r.h5" in line
    assert domain_warning("clefts", "synapses/clefts", synthetic, fake) is None
    assert domain_warning("aff", "neurons/sstem_affinities", real_model, real) is None


def test_cremi_chain_on_a_real_layout_file_uses_the_sstem_model(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """examples/cremi.toml on a CREMI-layout file at 40 x 4 x 4 nm without the phantom's
    `generator` attribute: the ssTEM model runs (with its stored waterz setting) and each of the
    phantom-trained synapse stages prints one warning line."""
    data = make_cremi_data(shape=(6, 64, 64))
    assert "generator" not in data.file_attrs
    path = write_cremi(tmp_path / "real.hdf", data)
    res = CliRunner().invoke(
        app,
        ["pipeline", "run", str(REPO / "examples" / "cremi.toml"), "--no-report",
         "--set", f"input.path='{path}'", "--set", f"output.dir='{tmp_path / 'run'}'",
         "--set", "stages.affinities.options.tta=false"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    warned = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert all("\n" not in w for w in warned), warned
    notes = {k: v.get("notes", {}) for k, v in json.loads((tmp_path / "run" / "manifest.json")
                                                  .read_text())["stages"].items()}  # fmt: skip
    assert notes["affinities"]["model_choice"]["model"] == "neurons/sstem_affinities"
    assert notes["affinities"]["model_domain"]["modality"] == "ssTEM"
    assert "domain_warning" not in notes["affinities"]
    assert notes["affinities"]["input_domain"]["phantom"] is False
    for stage in ("clefts", "polarity", "partners"):
        assert WARNING in notes[stage]["domain_warning"], stage
    # one line per stage that runs a phantom-trained model (the synapse models)
    warned_stages = sorted(k for k, n in notes.items() if "domain_warning" in n)
    assert len(warned) == len(warned_stages), (warned, warned_stages)
    assert sorted(w.split(":")[0] for w in warned) == warned_stages
    agg = notes["segment"]["agglomeration"]
    from synapse_toolkit.inference.onnx_model import OnnxModel
    from synapse_toolkit.models import resolve_model

    stored = OnnxModel(resolve_model("test", name="neurons/sstem_affinities").path, 1).metadata
    assert agg["chosen_by"] == "model metadata"
    assert agg["scoring"] == stored["agglomeration"]["scoring"]
    assert notes["segment"]["fragments"] == stored["agglomeration"]["fragments"]
