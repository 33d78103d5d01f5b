"""ssTEM models compared on sections they were not trained on, at one fixed waterz setting.

The check behind the refit of ``neurons/sstem_affinities`` (issue 18): each model predicts the
volume of ``--context`` sections as a user would run it (one (z, 512, 512) volume through the
pipeline's ``affinity-unet`` stage), then only the ``--score`` sections are segmented and scored
(mean 2D CREMI score, :func:`synapse_toolkit.metrics.sections.score_sections`) at the waterz
setting stored in ``--setting-from``'s metadata, so the models differ only in their weights. The
best threshold of that fragment setting and scoring on the scored sections is reported as a
second, labelled figure.

    python benchmarks/sstem_refit_check.py --models A.onnx B.onnx [--context 16-19] [--score 18-19]
        [--setting-from neurons/sstem_affinities] [--json F]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from synapse_toolkit.evaluation import isbi
from synapse_toolkit.nn.adapt import onnx_metadata, resolve_model


def stored_setting(model: str) -> dict[str, Any]:
    """The ``agglomeration`` entry of ``model``'s metadata (a registry name or an .onnx path)."""
    setting = onnx_metadata(resolve_model(model)).get("agglomeration")
    if not isinstance(setting, dict):
        raise SystemExit(f"{model}: no agglomeration setting in its metadata")
    return setting


def score_model(
    model: str, context: str, score: str, setting: dict[str, Any], isbi_dir: Path, threads: int
) -> dict[str, Any]:
    """The model's scores on the ``score`` sections, predicted within the ``context`` volume, at
    ``setting``'s fragments and scoring over every threshold."""
    sel = isbi.select_agglomeration(
        model, isbi_dir, score, context=context, scorings=(setting["scoring"],),
        fragment_settings=[setting["fragments"]], n_threads=threads,
    )  # fmt: skip
    rows = [{k: v for k, v in r.items() if k not in ("fragments", "scoring")} for r in sel["rows"]]
    at = min(rows, key=lambda r: abs(r["threshold"] - float(setting["threshold"])))
    return {"model": model, "at_setting": at, "best_threshold_on_scored": sel["best"],
            "sweep": rows}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--context", default="16-19")
    ap.add_argument("--score", default="18-19")
    ap.add_argument("--setting-from", default=isbi.DEFAULT_MODEL)
    ap.add_argument("--isbi-dir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    isbi_dir = a.isbi_dir or isbi.default_isbi_dir()
    setting = stored_setting(a.setting_from)
    report: dict[str, Any] = {"context": a.context, "scored": a.score, "setting": setting,
                              "setting_from": a.setting_from, "models": []}  # fmt: skip
    for m in a.models:
        r = score_model(m, a.context, a.score, setting, isbi_dir, a.threads)
        report["models"].append(r)
        at, best = r["at_setting"], r["best_threshold_on_scored"]
        print(f"{m}: {at['cremi_score']:.3f} at the setting (VOI {at['voi']:.3f}, "
              f"ARAND {at['arand']:.3f}); best threshold on the scored sections "
              f"{best['threshold']}: {best['cremi_score']:.3f}")  # fmt: skip
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
