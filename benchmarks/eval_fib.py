"""The former ``benchmarks/eval_fib.py`` command line, kept working: it runs
``syntk evaluate fib`` (the one implementation) with the same options.

    python benchmarks/eval_fib.py --raw VOL.h5:raw --truth VOL.h5:labels --voxel-size 10 10 10

maps to ``syntk evaluate fib --raw ... --truth ... --voxel-size 10 10 10``. ``--model-only`` is
``--no-baselines``, ``--no-match`` is ``--no-match-intensity``, and ``--json PATH`` writes the
command's JSON to PATH. Without ``--model``, the default FIB-SEM model is used: the one
``syntk evaluate fib`` uses, ``neurons/fib_affinities_v2``, and no longer the first model.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import typer


def syntk_arguments(a: argparse.Namespace) -> list[str]:
    """The ``syntk evaluate fib`` arguments for the old command's options."""
    out = ["evaluate", "fib", "--threads", str(a.threads)]
    for flag, value in (("--model", a.model), ("--raw", a.raw), ("--truth", a.truth),
                        ("--boundary", a.boundary), ("--crop", a.crop)):  # fmt: skip
        if value is not None:
            out += [flag, str(value)]
    if a.ignore_label is not None:
        out += ["--ignore-label", str(a.ignore_label)]
    if a.voxel_size is not None:
        out += ["--voxel-size", *(f"{v:g}" for v in a.voxel_size)]
    out += ["--tta"] if a.tta else []
    out += ["--no-match-intensity"] if a.no_match else []
    out += ["--robustness"] if a.robustness else []
    out += ["--no-baselines"] if a.model_only else []
    out += ["--json", "--quiet"] if a.json else []
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="registry name or .onnx file (default: syntk's FIB model)")
    ap.add_argument("--raw", help="your volume: FILE.h5[:DATASET] or STORE.zarr:ARRAY")
    ap.add_argument("--truth", help="its neuron labels (same forms as --raw)")
    ap.add_argument("--boundary", help="its boundary probability map, if any")
    ap.add_argument("--ignore-label", type=int, default=None, help="truth label left unscored")
    ap.add_argument("--voxel-size", type=float, nargs=3, metavar=("Z", "Y", "X"))
    ap.add_argument("--crop", help="z0:z1,y0:y1,x0:x1 (voxels)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write the results here as JSON")
    ap.add_argument("--model-only", action="store_true", help="skip the baselines")
    ap.add_argument("--tta", action="store_true", help="average the model over 8 mirrorings")
    ap.add_argument("--no-match", action="store_true", help="no intensity matching")
    ap.add_argument("--robustness", action="store_true", help="perturbed copies as well")
    a = ap.parse_args(argv)

    from synapse_toolkit.cli.main import app
    from synapse_toolkit.fsio import atomic_write_text

    args = syntk_arguments(a)
    if a.json is None:
        return _run(app, args)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = _run(app, args)
    if code == 0:
        atomic_write_text(a.json, buffer.getvalue())
        print(f"wrote {a.json}")
    else:
        sys.stdout.write(buffer.getvalue())
    return code


def _run(app: typer.Typer, args: list[str]) -> int:
    try:
        app(args=args, prog_name="syntk")
    except SystemExit as exc:  # typer ends with sys.exit(code)
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
