"""`syntk evaluate ...`: evaluations of the shipped models against classical baselines.

``syntk evaluate fib`` scores the FIB affinity model on the bundled gala test volume (or on your
volume with ``--raw/--truth/--voxel-size``) at the waterz scoring and threshold stored in the
model (chosen on its validation crop, without test labels), beside its best-on-test row and the
raw-intensity and boundary-map baselines. ``syntk evaluate fib-select`` is how that stored
threshold is chosen (and, with ``--write``, stored). Logic: :mod:`synapse_toolkit.evaluation.fib`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from synapse_toolkit.errors import SyntkError
from synapse_toolkit.evaluation.fib import DEFAULT_MODEL as _MODEL

app = typer.Typer(no_args_is_help=True, help="Evaluate shipped models against baselines.")


def _log(quiet: bool) -> Callable[[str], None]:
    def say(msg: str) -> None:
        if not quiet:
            typer.echo(msg, err=True)

    return say


def _parse_crop(text: str | None) -> tuple[tuple[int, int], ...] | None:
    """``z0:z1,y0:y1,x0:x1`` voxel ranges."""
    if text is None:
        return None
    try:
        parts = [tuple(int(v) for v in p.split(":")) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(len(p) != 2 or not 0 <= p[0] < p[1] for p in parts):
        raise SyntkError(f"--crop must be z0:z1,y0:y1,x0:x1 (voxels), got {text!r}")
    return tuple((p[0], p[1]) for p in parts)


def _volume(
    raw: str, truth: str, boundary: str | None, voxel_size: tuple[float, float, float],
    ignore_label: int | None, name: str,
) -> Any:  # fmt: skip
    from synapse_toolkit.evaluation import fib

    return fib.make_volume(
        fib.read_array(raw, "raw"), fib.read_array(truth, "truth"), voxel_size, name=name,
        boundary=None if boundary is None else fib.read_array(boundary, "boundary"),
        ignore_label=ignore_label,
    )  # fmt: skip


def _row(label: str, chosen: str, r: dict[str, Any] | None) -> str:
    if r is None:
        return f"{label:34s} {chosen:38s} (no stored threshold)"
    setting = f"{r['scoring']} @ {r['threshold']:.2f}"
    return (
        f"{label:34s} {chosen:38s} {setting:17s} {r['voi_split']:6.3f} {r['voi_merge']:6.3f} "
        f"{r['voi']:6.3f} {r['arand']:6.3f} {r['cremi_score']:6.3f}"
    )


def print_report(rep: dict[str, Any]) -> None:
    """The evaluation as a table: main figures first, optimistic ones labelled."""
    border = rep["border_threshold_nm"]
    mask = f"{border:g} nm border mask" if border else "no border mask"
    vs = " x ".join(f"{v:g}" for v in rep["voxel_size_nm"])
    m = rep["model"]
    sha = str(m.get("sha256", ""))[:12]
    typer.echo(f"{rep['volume']} {tuple(rep['shape'])} at {vs} nm (z, y, x)")
    typer.echo(
        f"model {m['model']} (sha256 {sha}...), tta {'on' if m['tta'] else 'off'}, intensity "
        f"matching {'on' if m['intensity_matching'] else 'off'}; inference {m['inference_s']} s"
    )
    typer.echo(f"scores: {rep['metrics']}; truth 0 ignored, {mask}")
    head = f"{'method':34s} {'setting chosen on':38s} {'scoring @ thr':17s}"
    typer.echo(f"{head} {'VOI sp':>6s} {'VOI mg':>6s} {'VOI':>6s} {'ARAND':>6s} {'CREMI':>6s}")
    agg = m.get("agglomeration") or {}
    typer.echo(_row("model", "model metadata (no test labels)", m["at_model_threshold"]))
    typer.echo(
        _row("  model, best on test (optimistic)", "this volume's labels", m["best_on_test"])
    )
    chosen_on: set[str] = set()
    for name, b in rep["baselines"].items():
        held = b["held_out"]
        label = f"{name} ({held['variant']})"
        if b["optimistic"]:
            typer.echo(_row(f"{label} (optimistic)", "this volume's labels", held))
            continue
        typer.echo(_row(label, "selection data (no test labels)", held))
        chosen_on.add(b["chosen_on"])
        bt = b["best_on_test"]
        typer.echo(_row(f"  best on test ({bt['variant']}, optim.)", "this volume's labels", bt))
    if agg:
        typer.echo(f"model setting chosen on: {agg.get('chosen_on', '?')}")
    for where in sorted(chosen_on):
        typer.echo(f"baseline settings chosen on: {where}")
    typer.echo("lower is better for VOI, ARAND and CREMI score (VOI in bits)")


@app.command("fib")
def fib_command(
    model: Annotated[str, typer.Option(help="Registry name or .onnx file.")] = _MODEL,
    raw: Annotated[
        str | None, typer.Option(help="Your raw volume: FILE.h5[:DATASET] or STORE.zarr:ARRAY.")
    ] = None,
    truth: Annotated[
        str | None, typer.Option(help="Its neuron labels (same forms as --raw).")
    ] = None,
    boundary: Annotated[
        str | None, typer.Option(help="Its boundary probability map, if any (a baseline).")
    ] = None,
    voxel_size: Annotated[
        tuple[float, float, float] | None,
        typer.Option(help="Voxel size Z Y X in nm (required with --raw).", show_default=False),
    ] = None,
    ignore_label: Annotated[
        int, typer.Option(help="Truth label left unscored (boundary); -1 for none.")
    ] = 0,
    select_raw: Annotated[
        str | None, typer.Option(help="Selection volume for the baselines' settings (raw).")
    ] = None,
    select_truth: Annotated[str | None, typer.Option(help="Its labels.")] = None,
    select_boundary: Annotated[str | None, typer.Option(help="Its boundary map.")] = None,
    crop: Annotated[
        str | None, typer.Option(help="Evaluate a crop z0:z1,y0:y1,x0:x1 (voxels).")
    ] = None,
    tta: Annotated[bool, typer.Option(help="Average the model over 8 mirrorings.")] = False,
    match_intensity: Annotated[
        bool, typer.Option(help="Match grey values to the model's training data.")
    ] = True,
    border_nm: Annotated[
        float, typer.Option(help="CREMI border mask in nm (0: none).", min=0)
    ] = 25.0,
    baselines: Annotated[bool, typer.Option(help="Score the classical baselines.")] = True,
    robustness: Annotated[
        bool, typer.Option(help="Also score perturbed copies (slow: 24 model passes).")
    ] = False,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """The FIB model against raw-intensity and boundary-map waterz, thresholds without test labels.

    Default volume: the bundled gala test volume; the baselines' settings are then chosen on the
    model's validation crop (gala train volume, x in [150, 200)). On your volume (--raw --truth
    --voxel-size) they are chosen on --select-* data if given, else on your labels (reported as
    optimistic).
    """
    from synapse_toolkit.evaluation import fib
    from synapse_toolkit.fsio import dumps

    say = _log(quiet or as_json)
    ignore = None if ignore_label < 0 else ignore_label
    roi = _parse_crop(crop)
    selection = None
    if raw is None:
        if truth is not None or boundary is not None:
            raise SyntkError("--truth/--boundary need --raw (without --raw: the gala test volume)")
        volume = fib.gala_volume("test")
        if voxel_size is not None:
            raise SyntkError("--voxel-size goes with --raw (the gala volume is 10 nm)")
        if baselines and select_raw is None:
            selection = fib.gala_validation_crop()
    else:
        if truth is None:
            raise SyntkError("--raw needs --truth (the labels to score against)")
        if voxel_size is None:
            raise SyntkError("--raw needs --voxel-size Z Y X (nm)")
        volume = _volume(raw, truth, boundary, voxel_size, ignore, f"{raw}")
    if select_raw is not None:
        if select_truth is None:
            raise SyntkError("--select-raw needs --select-truth")
        selection = _volume(
            select_raw, select_truth, select_boundary,
            tuple(voxel_size or volume.voxel_size_nm), ignore, f"{select_raw}",  # type: ignore[arg-type]
        )  # fmt: skip
    if roi is not None:
        if any(b > s for (_, b), s in zip(roi, volume.raw.shape, strict=True)):
            raise SyntkError(f"--crop {crop} exceeds the volume's shape {volume.raw.shape}")
        volume = volume.crop(roi, f"{volume.name}, crop {crop}")
    report = fib.evaluate(
        volume, model=model, tta=tta, match_intensity=match_intensity, selection=selection,
        baselines=baselines, border_threshold_nm=border_nm, n_threads=threads, log=say,
    )  # fmt: skip
    if robustness:
        raw_b = report["baselines"].get("raw intensity")
        setting = None if raw_b is None or raw_b["optimistic"] else raw_b["held_out"]
        report["robustness"] = fib.robustness(
            volume, model=model, tta=tta, border_threshold_nm=border_nm, raw_setting=setting,
            n_threads=threads, log=say,
        )  # fmt: skip
    if as_json:
        sys.stdout.write(dumps(report) + "\n")
        return
    print_report(report)
    for row in report.get("robustness", []):
        typer.echo(
            f"robustness {row['perturbation']:22s} model {row.get('matched', float('nan')):.3f} "
            f"(unmatched {row.get('unmatched', float('nan')):.3f}), raw "
            f"{row.get('raw', float('nan')):.3f}; best on test: model "
            f"{row['matched_best_on_test']:.3f}, raw {row['raw_best_on_test']:.3f}"
        )


@app.command("fib-select")
def fib_select(
    model: Annotated[str, typer.Option(help="Registry name or .onnx file.")] = _MODEL,
    copies: Annotated[
        bool,
        typer.Option(
            "--copies",
            help="Also choose on perturbed copies of the crop (blur sigma 1; blur 1.5, contrast "
            "x0.6, noise sd 6): the mean over all three.",
        ),
    ] = False,
    fragments: Annotated[
        bool,
        typer.Option(
            "--fragments",
            help="Also try distance-transform seeded fragments per section (interior < "
            "0.3/0.5/0.7, smoothing 0/1/2 px) beside waterz's own.",
        ),
    ] = False,
    border_nm: Annotated[
        float, typer.Option(help="Border mask in nm for the selection score (0: none).", min=0)
    ] = 0.0,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Store the choice in the --model .onnx file's metadata (`agglomeration`, "
            "`voxel_size_nm`; weights unchanged) and rewrite its .sha256 sidecar.",
        ),
    ] = False,
    threads: Annotated[int, typer.Option(min=1)] = 2,
    as_json: Annotated[bool, typer.Option("--json", help="Print the choice as JSON.")] = False,
) -> None:
    """Choose the FIB model's waterz setting on its validation crop (gala train volume, x in
    [150, 200); never the test volume), with and without TTA; the mean score over every volume
    and TTA setting decides."""
    import json

    from synapse_toolkit.evaluation import fib
    from synapse_toolkit.evaluation.isbi import fragment_grid
    from synapse_toolkit.nn.adapt import onnx_metadata, resolve_model

    if write and not model.endswith(".onnx"):
        raise SyntkError("--write needs --model PATH.onnx (the file to store the choice in)")
    crop = fib.gala_validation_crop()
    choice = fib.choose_agglomeration(
        model,
        fib.blurred_copies(crop, fib.SELECTION_COPIES) if copies else crop,
        fragment_settings=fragment_grid() if fragments else None,
        border_threshold_nm=border_nm,
        n_threads=threads,
        log=lambda m: typer.echo(m, err=True),
        copies_of=crop.name if copies else None,
    )
    stored = {k: v for k, v in choice.items() if k != "sweeps"}
    previous = onnx_metadata(resolve_model(model)).get("agglomeration")
    if previous:
        mean = fib.setting_mean(choice, previous)
        if mean is not None:
            stored["previous_setting_mean"] = round(mean, 4)
    if write:
        from synapse_toolkit.nn.export import update_metadata

        updates = {"agglomeration": dict(stored), "voxel_size_nm": list(fib.GALA_VOXEL_SIZE_NM)}
        stored["written"] = update_metadata(model, updates)
    if as_json:
        sys.stdout.write(json.dumps({**stored, "sweeps": choice["sweeps"]}) + "\n")
        return
    typer.echo(json.dumps(stored, indent=1))


from synapse_toolkit.cli.evaluate_isbi import register as _register_isbi  # noqa: E402

_register_isbi(app)  # `syntk evaluate isbi` / `isbi-export` (synapse_toolkit.evaluation.isbi)
