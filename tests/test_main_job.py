"""The README's main job runs end to end offline on the bundled demo with the shipped models."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from synapse_toolkit.cli.main import app
from synapse_toolkit.io.cremi import read_cremi

from .conftest import REPO


def test_main_job_runs_on_the_demo(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app,
        ["pipeline", "run", str(REPO / "examples" / "cremi.toml"), "--json",
         "--set", f"output.dir='{tmp_path / 'run'}'"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert {s["status"] for s in summary["stages"]} == {"ran"}
    scores = summary["scores"]
    neurons = scores["score_neurons.scores"]["values"]
    # quality guards of the shipped models on the demo (they give neuron CREMI 0.21, cleft 15.1 nm,
    # partner F 0.86 with synful); a broken model, option or stage wiring falls far outside
    # (waterz's own fragments gave the neurons 0.49)
    assert neurons["n_voxels"] > 0 and 0 < neurons["cremi_score"] < 0.35
    assert scores["score_clefts.scores"]["values"]["cremi_score"] < 30.0
    assert scores["score_partners.scores"]["values"]["fscore"] >= 0.7
    clusters = scores["score_clusters.scores"]  # found synapses against the phantom's types
    assert set(clusters["values"]) >= {"ari", "nmi", "ami"}
    assert clusters["details"]["n_found_matched"] >= 10
    for name in ("clusters_embedding.png", "clusters_gallery.png"):
        assert (tmp_path / "run" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # neurons from the model's stored fragments; partners from the finer waterz watershed ones
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    notes = manifest["stages"]
    assert notes["segment"]["notes"]["fragments"]["method"] == "distance_2d"
    assert notes["partner_segment"]["notes"]["fragments"] == {"method": "affinities"}
    assert manifest["config"]["stages"]["partners"]["inputs"]["segmentation"] == (
        "partner_segment.segmentation"
    )
    assert manifest["config"]["stages"]["partners"]["inputs"]["coarse_segmentation"] == (
        "segment.segmentation"
    )
    # synapse patches straightened on the predicted cleft, not on a predicted segment boundary
    assert manifest["config"]["stages"]["cluster"]["inputs"]["clefts"] == (
        "clefts.cleft_probability"
    )
    assert notes["cluster"]["notes"]["clustering"]["straightened_on"] == "cleft > 0.9"
    written = read_cremi(tmp_path / "run" / "prediction.hdf")
    assert written.neuron_ids is not None and written.clefts is not None
    assert written.neuron_ids.spatial_shape == (20, 256, 256)


def test_the_other_partner_assigner_is_one_set_away() -> None:
    """The main job's comment offers emsynconn on the same inputs: the config stays valid."""
    res = CliRunner().invoke(
        app,
        ["pipeline", "validate", str(REPO / "examples" / "cremi.toml"),
         "--set", "stages.partners.plugin=emsynconn"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output


def test_neurons_example_beats_the_classical_baselines(tmp_path: Path) -> None:
    """examples/neurons.toml (loader -> affinity U-Net -> waterz -> CREMI scorer, 25 nm border
    mask) on the bundled gala FIB-SEM test volume, single pass, no truth in the agglomerator: the
    threshold comes from the model's metadata. Better than raw-intensity waterz with its setting
    chosen on the validation crop (CREMI 0.205, VOI 0.679; `syntk evaluate fib`)."""
    res = CliRunner().invoke(
        app,
        ["pipeline", "run", str(REPO / "examples" / "neurons.toml"), "--json",
         "--set", f"output.dir='{tmp_path / 'run'}'", "--set", "stages.detect.options.tta=false"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [s["stage"] for s in summary["stages"]] == ["load", "detect", "agglomerate", "score"]
    neurons = summary["scores"]["score.scores"]["values"]
    assert neurons["cremi_score"] < 0.1 and neurons["voi_total"] < 0.3  # measured: 0.044, 0.112
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    agg = manifest["stages"]["agglomerate"]["notes"]["agglomeration"]
    assert agg["chosen_by"] == "model metadata"  # no truth wired: no choice on test labels
    fragments = manifest["stages"]["agglomerate"]["notes"]["fragments"]
    assert fragments["method"] == "distance_2d"  # the model's stored fragments


def test_fib_volume_example_runs_on_a_users_file_as_its_header_says(tmp_path: Path) -> None:
    """examples/fib_volume.toml with the three `--set`s its header gives: the raw is read from
    the input file itself (no path in the loader), waterz uses the model's stored setting, and
    the labels equal the library's inference path at that setting."""
    import h5py
    import numpy as np
    import zarr

    from synapse_toolkit.evaluation import fib

    crop = fib.gala_volume("test").raw[:24, :48, :48]
    mine = tmp_path / "mine.h5"
    with h5py.File(mine, "w") as f:
        f.create_dataset("raw", data=crop)
    run = tmp_path / "run"
    res = CliRunner().invoke(
        app,
        ["pipeline", "run", str(REPO / "examples" / "fib_volume.toml"), "--json",
         "--set", f"input.path='{mine}'", "--set", "stages.load.options.volumes.raw.dataset=raw",
         "--set", "stages.load.options.voxel_size_nm=[10, 10, 10]",
         "--set", f"output.dir='{run}'"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert [s["stage"] for s in summary["stages"]] == ["load", "detect", "agglomerate"]
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["agglomerate"]["notes"]["agglomeration"]["chosen_by"] == (
        "model metadata"
    )
    seg = np.asarray(zarr.open_array(str(run / "artifacts/agglomerate/segmentation.zarr"))[...])
    assert seg.shape == crop.shape and len(np.unique(seg)) > 3
    m = fib.model_affinities(fib.DEFAULT_MODEL, crop, (10, 10, 10), n_threads=1)
    agg = m.agglomeration or {}
    from synapse_toolkit.inference.agglomeration import agglomerate
    from synapse_toolkit.inference.fragments import make_fragments

    frags = make_fragments(m.affinities, agg.get("fragments"))
    same = agglomerate(m.affinities, [agg["threshold"]], scoring=agg["scoring"], fragments=frags)
    assert np.array_equal(seg, same[0])


def test_fib_volume_example_reads_a_tiff_stack_as_its_header_says(tmp_path: Path) -> None:
    """The header's TIFF route (image-stack loader, its options replaced whole) segments a folder
    of one TIFF per section exactly as the HDF5 route segments the same volume."""
    import h5py
    import numpy as np
    import tifffile
    import zarr

    from synapse_toolkit.evaluation import fib

    crop = fib.gala_volume("test").raw[:20, :40, :40]
    stack = tmp_path / "tiffs"
    stack.mkdir()
    for z, section in enumerate(crop):
        tifffile.imwrite(stack / f"section_{z}.tif", section)
    mine = tmp_path / "mine.h5"
    with h5py.File(mine, "w") as f:
        f.create_dataset("raw", data=crop)
    example = str(REPO / "examples" / "fib_volume.toml")
    routes = {
        "tiff": ["--set", f"input.path='{stack}'", "--set", "stages.load.plugin=image-stack",
                 "--set", "stages.load.options={voxel_size_nm = [10, 10, 10]}"],
        "hdf5": ["--set", f"input.path='{mine}'", "--set",
                 "stages.load.options.volumes.raw.dataset=raw",
                 "--set", "stages.load.options.voxel_size_nm=[10, 10, 10]"],
    }  # fmt: skip
    segs = {}
    for name, sets in routes.items():
        run = tmp_path / f"run-{name}"
        res = CliRunner().invoke(
            app, ["pipeline", "run", example, *sets, "--set", f"output.dir='{run}'"]
        )
        assert res.exit_code == 0, res.output
        path = run / "artifacts/agglomerate/segmentation.zarr"
        segs[name] = np.asarray(zarr.open_array(str(path))[...])
    assert segs["tiff"].shape == crop.shape and len(np.unique(segs["tiff"])) > 3
    assert np.array_equal(segs["tiff"], segs["hdf5"])
