"""`syntk evaluate isbi`, `isbi-export` and `isbi-select` (registered on the `evaluate` group).

Logic: :mod:`synapse_toolkit.evaluation.isbi`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from synapse_toolkit.errors import SyntkError
from synapse_toolkit.evaluation.isbi import DEFAULT_MODEL, DEFAULT_SELECT, DEFAULT_TEST


def _row(label: str, chosen: str, setting: str, r: dict[str, Any]) -> str:
    return (
        f"{label:36s} {chosen:30s} {setting:24s} {r['voi_split']:6.3f} {r['voi_merge']:6.3f} "
        f"{r['voi']:6.3f} {r['arand']:6.3f} {r['cremi_score']:6.3f}"
    )


def print_report(rep: dict[str, Any]) -> None:
    """The evaluation as a table: figures at settings chosen without test labels first,
    best-on-test rows labelled optimistic."""
    test = f"{rep['test_sections'][0]}-{rep['test_sections'][-1]}"
    sel = f"{rep['selection_sections'][0]}-{rep['selection_sections'][-1]}"
    vs = " x ".join(f"{v:g}" for v in rep["voxel_size_nm"])
    typer.echo(f"ISBI 2012 sections {test} at {vs} nm (z, y, x), {rep['isbi_dir']}")
    typer.echo(
        "scores: mean over sections of 2D VOI (bits), ARAND, CREMI = sqrt(VOI x ARAND); "
        "segmentation split into 2D pieces, truth = 2D cell components, membrane ignored"
    )
    head = f"{'method':36s} {'setting chosen on':30s} {'setting':24s}"
    typer.echo(f"{head} {'VOI sp':>6s} {'VOI mg':>6s} {'VOI':>6s} {'ARAND':>6s} {'CREMI':>6s}")
    m = rep["model"]
    agg = m.get("model_agglomeration") or {}
    setting = f"{agg.get('scoring', '?')} @ {agg.get('threshold', '?')}"
    frag = agg.get("fragments") or {}
    if frag.get("method") == "distance_2d":
        setting += f", dt {frag.get('boundary_threshold')}/{frag.get('dt_sigma')}"
    name = f"model {rep['model_name']} (pipeline{', TTA' if rep.get('tta') else ''})"
    typer.echo(_row(name, "model metadata", setting,
                    m["held_out"]))  # fmt: skip
    b = m["best_on_test"]
    typer.echo(_row("  model, best on test (optimistic)", "test labels",
                    f"stored scoring @ {b['threshold']}", b))  # fmt: skip
    if "raw_bar" in rep:
        r = rep["raw_bar"]
        c = r["chosen_on_selection"]
        setting = f"sigma {c['sigma']:g} px, q50 @ {c['threshold']}"
        typer.echo(_row("raw-intensity bar", f"sections {sel}", setting, r["held_out"]))
        bt = r["best_on_test"]
        typer.echo(_row("  raw bar, best on test (optimistic)", "test labels",
                        f"sigma {bt['sigma']:g} px, q50 @ {bt['threshold']}", bt))  # fmt: skip
    per = ", ".join(f"{s['cremi_score']:.3f}" for s in m["held_out"]["sections"])
    typer.echo(f"model per section (CREMI): {per}")
    if agg.get("chosen_on"):
        typer.echo(f"model setting chosen on: {agg['chosen_on']}")
    typer.echo("lower is better for VOI, ARAND and CREMI score")


def isbi_command(
    model: Annotated[str, typer.Option(help="Registry name or .onnx file.")] = DEFAULT_MODEL,
    isbi: Annotated[
        Path | None,
        typer.Option(
            help="ISBI 2012 folder with image/ and label/ (default: the shared copy "
            "beside a source checkout)."
        ),
    ] = None,
    test: Annotated[str, typer.Option(help="Held-out sections, e.g. 20-23.")] = DEFAULT_TEST,
    select: Annotated[
        str, typer.Option(help="Sections that choose the raw bar's sigma and threshold.")
    ] = DEFAULT_SELECT,
    baselines: Annotated[bool, typer.Option(help="Score the raw-intensity bar.")] = True,
    tta: Annotated[
        bool, typer.Option("--tta", help="The affinity stage averages its 8 mirrorings.")
    ] = False,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress lines.")] = False,
) -> None:
    """An ssTEM affinity model through the pipeline (no truth wired: its stored waterz setting)
    against raw-intensity waterz on ISBI 2012 sections, scored per 2D section."""
    from synapse_toolkit.evaluation import isbi as ev
    from synapse_toolkit.fsio import dumps

    folder = isbi or ev.default_isbi_dir()
    if isbi is None and not folder.is_dir():
        raise SyntkError(f"no ISBI data at {folder}: pass --isbi DIR (with image/ and label/)")

    def say(msg: str) -> None:
        if not (quiet or as_json):
            typer.echo(msg, err=True)

    rep = ev.evaluate(folder, model=model, test=test, select=select, baselines=baselines,
                      n_threads=threads, tta=tta, log=say)  # fmt: skip
    if as_json:
        sys.stdout.write(dumps(rep) + "\n")
        return
    print_report(rep)


def isbi_export_command(
    checkpoint: Annotated[Path, typer.Argument(help="best.pt of a run with validation.")],
    out: Annotated[Path, typer.Argument(help="Output .onnx (a .sha256 sidecar is written).")],
) -> None:
    """Export CHECKPOINT with the waterz setting chosen on its validation sections and the
    training config's domain table in the model's metadata."""
    from synapse_toolkit.evaluation import isbi as ev

    info = ev.export(checkpoint, out)
    keys = ("path", "sha256", "bytes", "max_abs_diff", "agglomeration")
    typer.echo(json.dumps({k: info[k] for k in keys if k in info}))


def isbi_select_command(
    model: Annotated[str, typer.Option(help="Registry name or .onnx file.")] = DEFAULT_MODEL,
    sections: Annotated[
        str, typer.Option(help="Validation sections that choose (never the held-out ones).")
    ] = "16-19",
    context: Annotated[
        str | None,
        typer.Option(
            help="Predict these sections as one volume and score only --sections "
            "(default: --sections alone)."
        ),
    ] = None,
    isbi: Annotated[
        Path | None, typer.Option(help="ISBI 2012 folder (default: the shared copy).")
    ] = None,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Store the choice as the --model .onnx file's `agglomeration` metadata "
            "(weights unchanged) and rewrite its .sha256 sidecar.",
        ),
    ] = False,
    tta: Annotated[
        bool, typer.Option("--tta", help="The affinity stage averages its 8 mirrorings.")
    ] = False,
    threads: Annotated[int, typer.Option(min=1)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print every row tried as JSON.")] = False,
) -> None:
    """Choose an ssTEM model's waterz fragments (waterz's watershed or distance-transform seeds),
    scoring and threshold on its validation sections by mean 2D CREMI score."""
    from synapse_toolkit.evaluation import isbi as ev
    from synapse_toolkit.fsio import dumps

    if write and not model.endswith(".onnx"):
        raise SyntkError("--write needs --model PATH.onnx (the file to store the choice in)")
    held = set(ev.parse_sections(DEFAULT_TEST))
    for opt, text in (("--sections", sections), ("--context", context)):
        if text and held & set(ev.parse_sections(text, opt)):
            raise SyntkError(f"{opt} {text} overlaps the held-out sections {DEFAULT_TEST}")
    folder = isbi or ev.default_isbi_dir()
    say = (lambda _m: None) if as_json else (lambda m: typer.echo(m, err=True))
    sel = ev.select_agglomeration(
        model, folder, sections, context=context, n_threads=threads, tta=tta, log=say
    )
    out: dict[str, Any] = {"agglomeration": sel["choice"]}
    if write:
        from synapse_toolkit.nn.export import update_metadata

        out["written"] = update_metadata(model, {"agglomeration": sel["choice"]})
    if as_json:
        sys.stdout.write(dumps({**out, "rows": sel["rows"]}) + "\n")
        return
    typer.echo(json.dumps(out, indent=1))


def register(app: typer.Typer) -> None:
    """Add the three commands to the ``evaluate`` group."""
    app.command("isbi")(isbi_command)
    app.command("isbi-export")(isbi_export_command)
    app.command("isbi-select")(isbi_select_command)
