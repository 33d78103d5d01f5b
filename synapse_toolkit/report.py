"""A visual report of a run directory: one HTML page plus PNGs (matplotlib, no display).

``write_report(run_dir)`` writes ``<run>/report.html`` and ``<run>/report/*.png``:

- the run's stages with timings, notes (model, agglomeration threshold) and warnings;
- the scores, one line per metric saying which direction is better and what it measures;
- EM runs: xy sections of the raw data with the segmentation, clefts and partner arrows drawn on
  them (true positive / false positive / false negative when partners were scored), at the
  sections where synapses and errors are, and an xz section; prediction maps beside them;
- a waterz threshold sweep (VOI split and merge against the threshold) when one ran;
- calcium runs: ROI outlines on the mean image (found / missed / false);
- clusters: the embedding, coloured by cluster.

Only the slices drawn are read from the volumes. Matplotlib is used through its object API
(``Figure`` + Agg canvas): no global backend is set, no window opens.
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from synapse_toolkit.artifacts import ArtifactStore, atomic_replace_dir
from synapse_toolkit.cremi_ids import CLEFT_INVALID_ID, NO_LABEL
from synapse_toolkit.data import (
    Annotations,
    ClusterAssignments,
    PartnerTable,
    Regions,
    ScoreRecord,
    Volume,
)
from synapse_toolkit.errors import DataError
from synapse_toolkit.fsio import atomic_write_text

__all__ = ["DPI", "ReportFigure", "metric_reading", "write_report"]

#: PNG resolution (pixels per inch of figure size)
DPI = 100
#: how many xy sections are drawn at most
MAX_SECTIONS = 3

TP_COLOUR = "#2ca02c"
FP_COLOUR = "#ffb000"
FN_COLOUR = "#e8171f"
TRUTH_COLOUR = "#1f9bd1"  # truth drawn where the run made no prediction to compare

# One line per metric key: what it measures. The direction comes from the scorer class.
READINGS: dict[str, str] = {
    "voi_split": "VOI split (bits): truth neurons cut into several segments (over-segmentation)",
    "voi_merge": "VOI merge (bits): distinct truth neurons joined in one segment (merges)",
    "voi_total": "VOI split + merge (bits)",
    "adapted_rand": "adapted Rand error: 1 - F-score of voxel pairs placed together; 0 is perfect",
    "adapted_rand_precision": "Rand precision: predicted same-segment pairs that are right",
    "adapted_rand_recall": "Rand recall: truth same-neuron pairs kept together",
    "n_voxels": "voxels compared",
    "n_ignored_voxels": "voxels ignored (truth ignore label, border mask)",
    "fp_mean": "mean distance (nm) from predicted cleft voxels to the nearest truth cleft",
    "fn_mean": "mean distance (nm) from truth cleft voxels to the nearest predicted cleft",
    "fp_std": "std of the false-positive distances (nm)",
    "fn_std": "std of the false-negative distances (nm)",
    "fp_max": "largest false-positive distance (nm)",
    "fn_max": "largest false-negative distance (nm)",
    "fp_median": "median false-positive distance (nm)",
    "fn_median": "median false-negative distance (nm)",
    "fp_count": "predicted cleft voxels measured",
    "fn_count": "truth cleft voxels measured",
    "false_positives": "predicted cleft voxels farther than the threshold from any truth cleft",
    "false_negatives": "truth cleft voxels farther than the threshold from any prediction",
    "voxel_fscore": "voxel F-score of cleft masks",
    "n_test_voxels": "predicted cleft voxels",
    "n_truth_voxels": "truth cleft voxels",
    "fscore": "F-score: harmonic mean of precision and recall",
    "precision": "fraction of predictions that match the truth",
    "recall": "fraction of the truth that is found",
    "tp": "true positives (matched)",
    "fp": "false positives (predicted, unmatched)",
    "fn": "false negatives (truth, unmatched)",
    "combined": "neurofinder combined: 2PR/(P+R)",
    "inclusion": "mean fraction of a found truth ROI covered by its match",
    "exclusion": "mean fraction of a matched prediction inside its truth ROI",
    "n_truth": "truth ROIs",
    "n_pred": "predicted ROIs",
    "ari": "adjusted Rand index against the known types (0 = chance, 1 = identical)",
    "nmi": "normalised mutual information with the known types",
    "ami": "adjusted mutual information (0 = chance, 1 = identical)",
    "homogeneity": "each cluster holds one type",
    "completeness": "each type falls in one cluster",
    "accuracy": "accuracy under the best cluster-to-type mapping",
}
METRIC_READINGS: dict[tuple[str, str], str] = {
    ("cremi-neurons", "cremi_score"): "CREMI neuron score: sqrt(VOI total x adapted Rand)",
    ("cremi-clefts", "cremi_score"): "CREMI cleft score: mean of fp_mean and fn_mean (nm)",
}


#: the metric keys a reader looks at first (bold in the table)
HEADLINE = {"cremi_score", "fscore", "combined", "ari", "f1", "voi_split", "voi_merge"}


def metric_reading(metric: str, key: str, direction: str | None) -> str:
    """The one-line reading of ``metric.key``: what it measures and which way is better."""
    text = METRIC_READINGS.get((metric, key)) or READINGS.get(key)
    if text is None and key.startswith("best_"):
        text = f"at the best threshold: {READINGS.get(key[5:], key[5:])}"
    arrow = {"lower": "lower is better", "higher": "higher is better"}.get(direction or "", "")
    return "; ".join(t for t in (text, arrow) if t)


def _directions() -> dict[str, tuple[set[str], set[str]]]:
    """metric name -> (lower-is-better keys, higher-is-better keys) from the installed scorers."""
    try:
        from synapse_toolkit.plugin_manager import get_plugins

        classes = [r.cls for r in get_plugins().stages.all()]
    except Exception:  # the report must not fail because a plugin does
        classes = []
    out: dict[str, tuple[set[str], set[str]]] = {}
    for cls in classes:
        lo = set(getattr(cls, "lower_is_better", ()) or ())
        hi = set(getattr(cls, "higher_is_better", ()) or ())
        if lo or hi:
            out[str(cls.name)] = (lo, hi)
    return out


def direction_of(dirs: dict[str, tuple[set[str], set[str]]], metric: str, key: str) -> str | None:
    lo, hi = dirs.get(metric, (set(), set()))
    base = key[5:] if key.startswith("best_") else key
    if key in lo or base in lo:
        return "lower"
    if key in hi or base in hi:
        return "higher"
    return None


# -- the run's contents ------------------------------------------------------------------------
@dataclass
class Artifact:
    stage: str
    port: str
    kind: str  # the stage kind (loader, detector, ...)
    type: str  # the artifact type (labels, partners, ...)
    record: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.stage}.{self.port}"


@dataclass
class ReportFigure:
    """One PNG of the report: file name (in the report folder), caption, pixel size."""

    name: str
    caption: str
    width: int
    height: int


@dataclass
class Run:
    run_dir: Path
    manifest: dict[str, Any]
    store: ArtifactStore
    artifacts: list[Artifact] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @classmethod
    def open(cls, run_dir: Path) -> Run:
        from synapse_toolkit.fsio import read_run_manifest

        manifest = read_run_manifest(run_dir)
        run = cls(run_dir, manifest, ArtifactStore(run_dir))
        for stage, rec in (manifest.get("stages") or {}).items():
            for port, out in (rec.get("outputs") or {}).items():
                run.artifacts.append(Artifact(stage, port, rec.get("kind", ""), out["type"], out))
        return run

    def config_inputs(self, stage: str) -> dict[str, str]:
        cfg = (self.manifest.get("config") or {}).get("stages", {}).get(stage, {})
        return dict(cfg.get("inputs") or {})

    def find(self, key: str) -> Artifact | None:
        return next((a for a in self.artifacts if a.key == key), None)

    def pick(
        self, types: tuple[str, ...], *, loader: bool | None = None, words: tuple[str, ...] = ()
    ) -> Artifact | None:
        """The first artifact of one of ``types`` (from a loader or not), preferring ports whose
        name holds one of ``words``."""
        cands = [a for a in self.artifacts if a.type in types]
        if loader is not None:
            cands = [a for a in cands if (a.kind == "loader") == loader]
        for w in words:
            hit = [a for a in cands if w in a.port]
            if hit:
                return hit[0]
        return None if words else (cands[0] if cands else None)

    def load(self, art: Artifact | None) -> Any:
        if art is None:
            return None
        try:
            return self.store.load(art.record)
        except (DataError, OSError, KeyError, ValueError) as exc:
            self.warnings.append(f"{art.key}: could not be read ({exc})")
            return None


# -- drawing helpers ---------------------------------------------------------------------------
def _figure(width_in: float, height_in: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, folder: Path, name: str, caption: str) -> ReportFigure:
    fig.savefig(folder / name, dpi=DPI, format="png")
    w, h = fig.get_size_inches() * DPI
    return ReportFigure(name, caption, round(w), round(h))


def _grey(img: np.ndarray) -> np.ndarray:
    a = np.asarray(img, np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        return np.zeros(a.shape)
    lo, hi = np.percentile(finite, [1, 99])
    return np.clip((a - lo) / max(hi - lo, 1e-12), 0, 1)


def label_colours(labels: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """(..., 4) RGBA: a distinct colour per id (golden-ratio hues), 0 and CREMI's reserved ids
    transparent, segment boundaries darker."""
    from matplotlib.colors import hsv_to_rgb

    lab = np.asarray(labels).astype(np.uint64)
    ids, inv = np.unique(lab, return_inverse=True)
    inv = inv.reshape(lab.shape)
    h = (ids.astype(np.float64) * 0.6180339887) % 1.0
    mix = (ids * np.uint64(2654435761)) % np.uint64(1000)
    s = 0.55 + 0.45 * (mix % np.uint64(7)).astype(np.float64) / 6
    v = 0.75 + 0.25 * (mix % np.uint64(5)).astype(np.float64) / 4
    rgb = hsv_to_rgb(np.stack([h, s, v], axis=1))
    a = np.full(ids.shape, alpha)
    a[(ids == 0) | (ids == NO_LABEL) | (ids == CLEFT_INVALID_ID)] = 0.0
    rgba = np.concatenate([rgb, a[:, None]], axis=1)[inv]
    edge = np.zeros(lab.shape, bool)
    if lab.ndim == 2:
        edge[1:, :] |= lab[1:, :] != lab[:-1, :]
        edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
    rgba[edge & (rgba[..., 3] > 0), :3] *= 0.45
    return rgba


def cleft_colours(pred: np.ndarray | None, truth: np.ndarray | None) -> np.ndarray | None:
    """RGBA of cleft voxels: predicted in truth green, predicted only orange, truth only red."""
    from matplotlib.colors import to_rgba

    def mask(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        a = np.asarray(a).astype(np.uint64)
        return (a != 0) & (a != NO_LABEL) & (a != CLEFT_INVALID_ID)

    p, t = mask(pred), mask(truth)
    ref = p if p is not None else t
    if ref is None:
        return None
    shape = ref.shape
    out = np.zeros((*shape, 4))
    if p is not None and t is not None:
        out[p & t] = to_rgba(TP_COLOUR, 0.85)
        out[p & ~t] = to_rgba(FP_COLOUR, 0.85)
        out[t & ~p] = to_rgba(FN_COLOUR, 0.85)
    elif p is not None:
        out[p] = to_rgba(TP_COLOUR, 0.85)
    elif t is not None:  # truth alone: nothing was predicted to miss it
        out[t] = to_rgba(TRUTH_COLOUR, 0.75)
    return out


# -- volume access on the raw grid -------------------------------------------------------------
@dataclass
class Grid:
    """The raw volume's grid: voxel size and offset in nm, spatial shape (z, y, x)."""

    voxel_size: np.ndarray
    offset: np.ndarray
    shape: tuple[int, int, int]

    def index(self, points_nm: np.ndarray) -> np.ndarray:
        return np.round((np.asarray(points_nm, float) - self.offset) / self.voxel_size)

    def extent_xy(self) -> list[float]:
        y0, x0 = self.offset[1], self.offset[2]
        x1 = x0 + self.shape[2] * self.voxel_size[2]
        return [x0, x1, y0 + self.shape[1] * self.voxel_size[1], y0]

    def extent_xz(self) -> list[float]:
        z0, x0 = self.offset[0], self.offset[2]
        x1 = x0 + self.shape[2] * self.voxel_size[2]
        return [x0, x1, z0 + self.shape[0] * self.voxel_size[0], z0]


def _spatial(vol: Volume, key: tuple[Any, ...], channel: int = 0) -> np.ndarray:
    """``vol.data[key]`` on the spatial axes (first channel of a multi-channel volume)."""
    if len(vol.shape) == 4:
        return np.asarray(vol.data[(channel, *key)])
    return np.asarray(vol.data[key])


def section(vol: Volume, grid: Grid, axis: str, world: float, fill: float = 0) -> np.ndarray | None:
    """The xy section at world z (``axis='z'``) or the xz section at world y (``axis='y'``) of
    ``vol``, placed on ``grid``; None when the voxel sizes differ or the plane misses ``vol``."""
    if not np.allclose(vol.voxel_size_nm, grid.voxel_size):
        return None
    a = 0 if axis == "z" else 1
    i = round((world - vol.offset_nm[a]) / vol.voxel_size_nm[a])
    if not 0 <= i < vol.spatial_shape[a]:
        return None
    plane = _spatial(vol, (i,) if axis == "z" else (slice(None), i))
    axes = (1, 2) if axis == "z" else (0, 2)
    out = np.full(tuple(grid.shape[k] for k in axes), fill, dtype=plane.dtype)
    starts = [round((vol.offset_nm[k] - grid.offset[k]) / grid.voxel_size[k]) for k in axes]
    src, dst = [], []
    for s, n_in, n_out in zip(starts, plane.shape, out.shape, strict=True):
        lo, hi = max(0, s), min(n_out, s + n_in)
        if hi <= lo:
            return None
        dst.append(slice(lo, hi))
        src.append(slice(lo - s, hi - s))
    out[tuple(dst)] = plane[tuple(src)]
    return out


# -- partners ----------------------------------------------------------------------------------
@dataclass
class Pairs:
    """Partner pairs in world nm, with their state: 'tp', 'fp' (predicted), 'fn' (truth)."""

    pre: np.ndarray
    post: np.ndarray
    state: list[str]


def _as_annotations(value: Any) -> Annotations | None:
    if isinstance(value, PartnerTable):
        return value.to_annotations()
    if isinstance(value, Annotations):
        return value
    return None


def partner_pairs(run: Run) -> tuple[Pairs | None, str]:
    """Predicted and truth pairs, coloured by the partner scorer's matches when it ran."""
    from synapse_toolkit.metrics.cremi_partners import pair_locations

    zero = np.zeros(3)
    for stage, rec in (run.manifest.get("stages") or {}).items():
        if rec.get("plugin") != "cremi-partners":
            continue
        scores = run.load(run.find(f"{stage}.scores"))
        ins = run.config_inputs(stage)
        pred = _as_annotations(run.load(run.find(ins.get("prediction", ""))))
        truth = _as_annotations(run.load(run.find(ins.get("truth", ""))))
        if not isinstance(scores, ScoreRecord) or pred is None or truth is None:
            continue
        matches = scores.details.get("matches") or []
        mp = {int(m[0]) for m in matches}
        mt = {int(m[1]) for m in matches}
        r_pre, r_post = pair_locations(pred, zero)
        g_pre, g_post = pair_locations(truth, zero)
        state = ["tp" if i in mp else "fp" for i in range(len(r_pre))]
        state += ["fn" for j in range(len(g_pre)) if j not in mt]
        keep = np.array([j not in mt for j in range(len(g_pre))], bool)
        pre = np.concatenate([r_pre, g_pre[keep]]) if len(g_pre) else r_pre
        post = np.concatenate([r_post, g_post[keep]]) if len(g_post) else r_post
        return Pairs(pre, post, state), f"scored by {stage}"
    art = run.pick(("partners",), loader=False)
    value = _as_annotations(run.load(art))
    if art is None or value is None:
        return None, ""
    pre, post = pair_locations(value, zero)
    return Pairs(pre, post, ["tp"] * len(pre)), f"predicted by {art.stage} (not scored)"


def choose_sections(grid: Grid, pairs: Pairs | None, n: int = MAX_SECTIONS) -> list[int]:
    """Up to ``n`` z indices where partner pairs are, errors counting double; spread apart."""
    nz = grid.shape[0]
    if pairs is None or len(pairs.state) == 0:
        return sorted({nz // 2, nz // 4, (3 * nz) // 4})[:n] if nz > 3 else [nz // 2]
    mid = grid.index((pairs.pre + pairs.post) / 2)[:, 0].astype(int)
    weight = np.array([1.0 if s == "tp" else 2.0 for s in pairs.state])
    score = np.zeros(nz)
    for z, w in zip(mid, weight, strict=True):
        for dz in (-1, 0, 1):
            if 0 <= z + dz < nz:
                score[z + dz] += w * (1.0 if dz == 0 else 0.5)
    gap = max(2, nz // 8)
    chosen: list[int] = []
    for z in np.argsort(-score, kind="stable"):
        if score[z] <= 0 or len(chosen) == n:
            break
        if all(abs(int(z) - c) >= gap for c in chosen):
            chosen.append(int(z))
    return sorted(chosen) or [nz // 2]


def _draw_pairs(ax: Any, pairs: Pairs, grid: Grid, z: int | None, y: int | None) -> int:
    """Arrows pre -> post of the pairs near section z (xy) or row y (xz); returns how many."""
    from matplotlib import patheffects

    idx_pre, idx_post = grid.index(pairs.pre), grid.index(pairs.post)
    colours = {"tp": TP_COLOUR, "fp": FP_COLOUR, "fn": FN_COLOUR}
    n = 0
    for k, state in enumerate(pairs.state):
        if z is not None:
            near = min(abs(idx_pre[k, 0] - z), abs(idx_post[k, 0] - z)) <= 1
            a, b = pairs.pre[k, [2, 1]], pairs.post[k, [2, 1]]
        else:
            near = min(abs(idx_pre[k, 1] - y), abs(idx_post[k, 1] - y)) <= 12
            a, b = pairs.pre[k, [2, 0]], pairs.post[k, [2, 0]]
        if not near:
            continue
        n += 1
        c = colours[state]
        halo = [patheffects.withStroke(linewidth=3.5, foreground="white")]
        ax.annotate("", xy=(b[0], b[1]), xytext=(a[0], a[1]),
                    arrowprops={"arrowstyle": "-|>,head_width=0.35", "color": c, "lw": 1.8,
                                "linestyle": "--" if state == "fn" else "-",
                                "shrinkA": 0, "shrinkB": 0, "path_effects": halo})  # fmt: skip
        ax.plot([a[0]], [a[1]], "o", ms=5, mfc=c, mec="white", mew=1.0)
    return n


# -- report sections ---------------------------------------------------------------------------
@dataclass
class Section:
    title: str
    html: str = ""
    figures: list[ReportFigure] = field(default_factory=list)


def _shows_synapses(layers: dict[str, Volume | None], *, with_partners: bool) -> bool:
    return with_partners or any(isinstance(layers[k], Volume) for k in ("clefts", "truth clefts"))


def _segmentation_panels(
    layers: dict[str, Volume | None], grid: Grid, axis: str, world: float
) -> list[tuple[str, np.ndarray | None]]:
    panels: list[tuple[str, np.ndarray | None]] = [("EM", None)]
    for name in ("segmentation", "truth segmentation"):
        vol = layers[name]
        if isinstance(vol, Volume):
            s = section(vol, grid, axis, world)
            if s is not None:
                panels.append((name, label_colours(s)))
    return panels


def xy_panels(
    layers: dict[str, Volume | None], grid: Grid, world_z: float, *, with_partners: bool
) -> list[tuple[str, np.ndarray | None]]:
    """The titled panels of one xy section after the EM: segmentations, then clefts and
    partners only when the run has clefts or partners (a neuron-only run shows no empty panel)."""
    panels = _segmentation_panels(layers, grid, "z", world_z)
    if not _shows_synapses(layers, with_partners=with_partners):
        return panels
    cp, ct = (layers["clefts"], layers["truth clefts"])
    cl = cleft_colours(
        section(cp, grid, "z", world_z) if isinstance(cp, Volume) else None,
        section(ct, grid, "z", world_z, fill=NO_LABEL) if isinstance(ct, Volume) else None,
    )
    title = "clefts and partners" if isinstance(cp, Volume) else "truth clefts (blue)"
    panels.append((title, cl))
    return panels


def _em_sections(run: Run, folder: Path) -> list[Section]:
    raw_art = run.pick(("intensity",), loader=True, words=("raw",)) or run.pick(("intensity",))
    raw = run.load(raw_art)
    if raw_art is None or not isinstance(raw, Volume) or len(raw.shape) != 3:
        return []
    if raw.spatial_shape[0] < 2:
        return []
    grid = Grid(np.asarray(raw.voxel_size_nm), np.asarray(raw.offset_nm), raw.spatial_shape)
    seg_art = run.pick(("labels",), loader=False, words=("segmentation", "neuron", "seg"))
    layers: dict[str, Volume | None] = {
        "segmentation": run.load(seg_art),
        "truth segmentation": run.load(run.pick(("labels",), loader=True, words=("neuron",))),
        "clefts": run.load(run.pick(("labels",), loader=False, words=("cleft",))),
        "truth clefts": run.load(run.pick(("labels",), loader=True, words=("cleft",))),
    }
    maps = [a for a in run.artifacts if a.type in ("map", "affinities")][:3]
    pairs, pairs_source = partner_pairs(run)
    zs = choose_sections(grid, pairs)
    vs = grid.voxel_size
    sec = Section("Sections through the volume")
    notes = [f"raw: <code>{html.escape(raw_art.key)}</code> {grid.shape[0]}x{grid.shape[1]}x"
             f"{grid.shape[2]} voxels (z, y, x) at {vs[0]:g}x{vs[1]:g}x{vs[2]:g} nm"]  # fmt: skip
    for name, vol in layers.items():
        if isinstance(vol, Volume):
            notes.append(f"{name}: <code>{html.escape(vol.name or '?')}</code>")
    if pairs is not None:
        counts = {s: pairs.state.count(s) for s in ("tp", "fp", "fn")}
        notes.append(f"partners {pairs_source}: {counts['tp']} matched, {counts['fp']} false "
                     f"positive, {counts['fn']} missed")  # fmt: skip
    sec.html = "<p>" + "; ".join(notes) + ".</p>"
    legend = "Segment colours are arbitrary.</p>"
    if _shows_synapses(layers, with_partners=pairs is not None):
        legend = (
            f"Clefts and partners: <span style='color:{TP_COLOUR}'>&#9632; found (cleft voxels "
            f"in the truth; matched pairs)</span> <span style='color:{FP_COLOUR}'>&#9632; false "
            f"positive</span> <span style='color:{FN_COLOUR}'>&#9632; missed (dashed "
            "arrows)</span>. Arrows point from the pre- to the post-synaptic site (dot = pre "
            "site) and are drawn on sections within one section of either site. Sections are "
            "chosen where partners and errors are; segment colours are arbitrary.</p>"
        )
    sec.html += "<p class='legend'>" + legend
    for z in zs:
        world_z = grid.offset[0] + z * vs[0]
        em = _spatial(raw, (z,))
        panels = xy_panels(layers, grid, world_z, with_partners=pairs is not None)
        fig = _panel_figure(em, panels, grid.extent_xy(), pairs, grid, z=z)
        fig.suptitle(f"xy section z = {z} ({world_z:g} nm)", fontsize=11)
        sec.figures.append(_save(fig, folder, f"section_z{z}.png",
                                 f"xy section z = {z} ({world_z:g} nm)"))  # fmt: skip
    # xz: through the first chosen section's busiest partner (or the middle row)
    y = grid.shape[1] // 2
    if pairs is not None and len(pairs.state):
        mid = grid.index((pairs.pre + pairs.post) / 2)
        near = np.abs(mid[:, 0] - zs[0]) <= 1
        y = int(np.clip(mid[near][0, 1] if near.any() else mid[0, 1], 0, grid.shape[1] - 1))
    world_y = grid.offset[1] + y * vs[1]
    em = _spatial(raw, (slice(None), y))
    panels = _segmentation_panels(layers, grid, "y", world_y)
    fig = _panel_figure(em, panels, grid.extent_xz(), pairs, grid, y=y, ylabel="z (nm)")
    fig.suptitle(f"xz section y = {y} ({world_y:g} nm)", fontsize=11)
    sec.figures.append(
        _save(fig, folder, f"section_y{y}.png", f"xz section y = {y} ({world_y:g} nm)")
    )
    # prediction maps at the first chosen section
    if maps:
        world_z = grid.offset[0] + zs[0] * vs[0]
        mpanels: list[tuple[str, np.ndarray]] = []
        for a in maps:
            vol = run.load(a)
            if isinstance(vol, Volume):
                s = section(vol, grid, "z", world_z, fill=np.nan)
                if s is not None:
                    mpanels.append((a.key, s.astype(np.float64)))
        if mpanels:
            fig = _figure(4.2 * len(mpanels), 4.6)
            for i, (name, m) in enumerate(mpanels):
                ax = fig.add_subplot(1, len(mpanels), i + 1)
                im = ax.imshow(m, cmap="magma" if np.nanmin(m) >= 0 else "coolwarm",
                               extent=grid.extent_xy(), interpolation="nearest")  # fmt: skip
                ax.set_title(name, fontsize=9)
                ax.set_xlabel("x (nm)", fontsize=8)
                ax.tick_params(labelsize=7)
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.03)
            fig.suptitle(f"prediction maps at z = {zs[0]} (first channel)", fontsize=11)
            fig.tight_layout()
            sec.figures.append(_save(fig, folder, "maps.png", "prediction maps (first channel)"))
    return [sec]


def _panel_figure(
    em: np.ndarray,
    panels: list[tuple[str, np.ndarray | None]],
    extent: list[float],
    pairs: Pairs | None,
    grid: Grid,
    *,
    z: int | None = None,
    y: int | None = None,
    ylabel: str = "y (nm)",
) -> Any:
    n = len(panels)
    cols = 2 if n > 2 and z is not None else n
    rows = -(-n // cols)
    ratio = abs(extent[2] - extent[3]) / max(abs(extent[1] - extent[0]), 1e-9)
    w, wspace, hspace = 5.0, 0.22, 0.28
    # panel height from the width a panel really gets (margins, spacing), so rows do not float
    # apart in empty space; the titles and labels take 1.25 in
    panel_w = w * cols * (0.98 - 0.08) / (cols + wspace * (cols - 1))
    panel_h = min(panel_w * ratio, 8.0)
    fig = _figure(w * cols, panel_h * (rows + hspace * (rows - 1)) + 1.25)
    grey = _grey(em)
    for i, (title, overlay) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(grey, cmap="gray", extent=extent, interpolation="nearest", vmin=0, vmax=1)
        if overlay is not None:
            ax.imshow(overlay, extent=extent, interpolation="nearest")
        if pairs is not None and "clefts" in title:
            _draw_pairs(ax, pairs, grid, z, y)
        if pairs is not None and z is None and title == "EM":
            _draw_pairs(ax, pairs, grid, None, y)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("x (nm)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
    top = 1 - 0.75 / fig.get_size_inches()[1]  # the suptitle above the panel titles
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.5 / fig.get_size_inches()[1], top=top,
                        wspace=wspace, hspace=hspace)  # fmt: skip
    return fig


def _sweep_sections(run: Run, folder: Path) -> list[Section]:
    out = []
    for a in run.artifacts:
        if a.type != "scores":
            continue
        rec = run.load(a)
        if not isinstance(rec, ScoreRecord) or not rec.details.get("sweep"):
            continue
        rows = sorted(rec.details["sweep"], key=lambda r: r["threshold"])
        if len(rows) < 2 or "voi_split" not in rows[0]:
            continue
        th = [r["threshold"] for r in rows]
        fig = _figure(6.5, 4.0)
        ax = fig.add_subplot(1, 1, 1)
        ax.plot(th, [r["voi_split"] for r in rows], "o-", label="VOI split (bits)")
        ax.plot(th, [r["voi_merge"] for r in rows], "s-", label="VOI merge (bits)")
        if "adapted_rand" in rows[0]:
            ax.plot(th, [r["adapted_rand"] for r in rows], "^-", label="adapted Rand error")
        chosen = run.manifest["stages"][a.stage].get("notes", {}).get("agglomeration") or {}
        if "threshold" in chosen:
            ax.axvline(chosen["threshold"], color="k", ls=":", label="chosen threshold")
        ax.set_xlabel(f"agglomeration threshold ({rec.details.get('scoring', '')})")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        name = f"sweep_{a.stage}.png"
        sec = Section(f"Agglomeration threshold sweep ({a.stage})")
        by = html.escape(str(rec.details.get("select_by", "?")))
        sec.html = ("<p>Raising the threshold merges more: VOI split falls, VOI merge rises. "
                    f"Selected by {by}.</p>")  # fmt: skip
        sec.figures.append(_save(fig, folder, name, "VOI split/merge against the threshold"))
        out.append(sec)
    return out


def _outline(region: np.ndarray, shape: tuple[int, int]) -> list[np.ndarray]:
    """The outline of one ROI as (x, y) polylines, contoured on its bounding box (plus a pixel):
    a contour artist per ROI kept its grid, and hundreds of ROIs took hundreds of megabytes."""
    import contourpy  # matplotlib's contouring library

    ok = (region[:, 0] >= 0) & (region[:, 0] < shape[0]) & (region[:, 1] >= 0)
    ok &= region[:, 1] < shape[1]
    rr, cc = region[ok, 0], region[ok, 1]
    if rr.size == 0:
        return []
    r0, c0 = int(rr.min()) - 1, int(cc.min()) - 1
    m = np.zeros((int(rr.max()) - r0 + 2, int(cc.max()) - c0 + 2))
    m[rr - r0, cc - c0] = 1.0
    rows, cols = np.arange(r0, r0 + m.shape[0]), np.arange(c0, c0 + m.shape[1])
    lines = contourpy.contour_generator(cols, rows, m).lines(0.5)
    return [np.asarray(line) for line in lines]


def _draw_outlines(ax: Any, regions: list[np.ndarray], colour: str, shape: tuple[int, int]) -> None:
    """All ``regions`` outlined in one line collection."""
    from matplotlib.collections import LineCollection

    paths = [p for r in regions for p in _outline(r, shape)]
    if paths:
        ax.add_collection(LineCollection(paths, colors=colour, linewidths=1.2))


def _calcium_sections(run: Run, folder: Path) -> list[Section]:
    from synapse_toolkit.metrics.neurofinder import match_regions

    img_art = run.pick(("intensity", "volume"), loader=True)
    img = run.load(img_art)
    region_arts = [a for a in run.artifacts if a.type == "regions" and a.kind != "loader"]
    if not isinstance(img, Volume) or not region_arts:
        return []
    mean = np.asarray(_spatial(img, (img.spatial_shape[0] // 2,)), np.float64)
    shape = (mean.shape[0], mean.shape[1])
    truth_for: dict[str, tuple[Regions, float]] = {}
    for stage, rec in (run.manifest.get("stages") or {}).items():
        if rec.get("plugin") == "neurofinder":
            ins = run.config_inputs(stage)
            t = run.load(run.find(ins.get("truth", "")))
            s = run.load(run.find(f"{stage}.scores"))
            thr = float(s.details.get("threshold_px", 5.0)) if isinstance(s, ScoreRecord) else 5.0
            if isinstance(t, Regions):
                truth_for[ins.get("prediction", "")] = (t, thr)
    sec = Section("Regions of interest on the mean image")
    sec.html = (f"<p><span style='color:{TP_COLOUR}'>&#9632; found</span> "
                f"<span style='color:{FN_COLOUR}'>&#9632; missed</span> "
                f"<span style='color:{FP_COLOUR}'>&#9632; false</span> (matched by centre "
                "distance below the scorer's threshold); without truth every region is drawn "
                "green.</p>")  # fmt: skip
    fig = _figure(5.0 * len(region_arts), 5.4)
    counts: list[str] = []
    for i, a in enumerate(region_arts):
        pred = run.load(a)
        if not isinstance(pred, Regions):
            continue
        ax = fig.add_subplot(1, len(region_arts), i + 1)
        ax.imshow(_grey(mean), cmap="gray", interpolation="nearest")
        title = f"{a.key}: {len(pred)} ROIs"
        if a.key in truth_for:
            truth, thr = truth_for[a.key]
            matches = match_regions(truth, pred, thr)
            mt, mp = {m[0] for m in matches}, {m[1] for m in matches}
            found = [r for j, r in enumerate(pred.coordinates) if j in mp]
            false = [r for j, r in enumerate(pred.coordinates) if j not in mp]
            _draw_outlines(ax, found, TP_COLOUR, shape)
            _draw_outlines(ax, false, FP_COLOUR, shape)
            missed = [r for j, r in enumerate(truth.coordinates) if j not in mt]
            _draw_outlines(ax, missed, FN_COLOUR, shape)
            title += (
                f" ({len(mp)} found, {len(truth) - len(mt)} missed, {len(pred) - len(mp)} false)"
            )
        else:
            _draw_outlines(ax, list(pred.coordinates), TP_COLOUR, shape)
        ax.set_xlim(-0.5, shape[1] - 0.5)  # outlines at the border must not widen the view
        ax.set_ylim(shape[0] - 0.5, -0.5)
        ax.set_title(title, fontsize=9)
        counts.append(html.escape(title))
        ax.set_axis_off()
    fig.tight_layout()
    sec.html += "<ul>" + "".join(f"<li>{c}</li>" for c in counts) + "</ul>"
    sec.figures.append(_save(fig, folder, "regions.png", "ROI outlines on the mean image"))
    return [sec]


def _cluster_sections(run: Run, folder: Path) -> list[Section]:
    out = []
    for a in run.artifacts:
        if a.type != "clusters":
            continue
        cl = run.load(a)
        if not isinstance(cl, ClusterAssignments) or cl.embedding is None or len(cl.labels) < 2:
            continue
        emb = cl.embedding - cl.embedding.mean(axis=0)
        if emb.shape[1] > 2:
            _, _, vt = np.linalg.svd(emb, full_matrices=False)
            emb = emb @ vt[:2].T
        elif emb.shape[1] == 1:
            emb = np.concatenate([emb, np.zeros_like(emb)], axis=1)
        fig = _figure(5.5, 4.5)
        ax = fig.add_subplot(1, 1, 1)
        sc = ax.scatter(emb[:, 0], emb[:, 1], c=cl.labels, cmap="tab10", s=14)
        ax.legend(*sc.legend_elements(), title="cluster", fontsize=7)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        fig.tight_layout()
        sec = Section(f"Clusters ({a.key})")
        sec.html = f"<p>{len(cl.labels)} synapses; embedding projected on its first two PCs.</p>"
        sec.figures.append(_save(fig, folder, f"clusters_{a.stage}.png", "cluster embedding"))
        out.append(sec)
    return out


def _written_pictures(run: Run) -> str:
    """The PNGs writer stages wrote into the run directory (cluster gallery, ROI overlays)."""
    by: dict[Path, str] = {}
    for a in run.artifacts:
        path = run.run_dir / a.record["path"]
        if a.type == "file" and path.suffix.lower() == ".png" and path.is_file():
            by[path] = f"written by stage {a.stage}"
    for path in sorted(run.run_dir.glob("*.png")):  # pictures stages wrote without declaring
        by.setdefault(path, "in the run directory")
    items = []
    for path, why in by.items():
        rel = html.escape(path.relative_to(run.run_dir).as_posix())
        items.append(f"<figure><img src='{rel}' style='max-width:100%' alt='{rel}'>"
                     f"<figcaption>{rel} ({html.escape(why)})</figcaption></figure>")  # fmt: skip
    return "".join(items)


def _timing_figure(run: Run, folder: Path) -> ReportFigure | None:
    stages = run.manifest.get("stages") or {}
    if not stages:
        return None
    names = list(stages)
    secs = [float(stages[n].get("seconds", 0.0)) for n in names]
    fig = _figure(6.5, 0.35 * len(names) + 1.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(range(len(names)), secs, color="#4c72b0")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return _save(fig, folder, "timings.png", "time per stage")


# -- html ---------------------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;
max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.25em;margin-top:32px;
border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:0.9em;margin:8px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.meta{color:#555;font-size:0.92em} .warn{background:#fff4d6;border-left:4px solid #e0a000;
padding:6px 10px;margin:4px 0} figure{margin:12px 0} figcaption{color:#555;font-size:0.85em}
img{max-width:100%;height:auto;border:1px solid #eee} code{font-size:0.92em}
tr.head td{font-weight:600;background:#f7fbff} .up{color:#2a7a2a} .down{color:#2a5aa0}
.legend span{margin-right:14px}
"""


def _number(v: float) -> str:
    """Counts as integers, other values to 4 significant digits."""
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return f"{v:.4g}"


def _plain(v: Any) -> str:
    if isinstance(v, float):
        return _number(v)
    return json.dumps(v) if isinstance(v, dict | list) else str(v)


def _fmt(v: Any) -> str:
    return html.escape(_plain(v))


def _notes_html(notes: dict[str, Any]) -> str:
    parts = []
    for k, v in notes.items():
        if k == "model" and isinstance(v, dict):
            v = Path(str(v.get("path", "?"))).name + (f" (sha256 {str(v['sha256'])[:12]}…)"
                                                       if v.get("sha256") else "")  # fmt: skip
        parts.append(f"<b>{html.escape(k)}</b>: {_fmt(v)}")
    return "<br>".join(parts)


def _warnings(run: Run) -> list[str]:
    out = []
    m = run.manifest
    if m.get("status") != "complete":
        out.append(f"run status is {m.get('status', 'unknown')!r}: the run did not finish")
    cfg_stages = (m.get("config") or {}).get("stages") or {}
    ran = m.get("stages") or {}
    for name, cfg in cfg_stages.items():
        if name not in ran and cfg.get("enabled", True):
            out.append(f"stage {name} did not run (skipped: an input was missing, or it failed)")
    raw = run.pick(("intensity",), loader=True)
    raw_vs = None
    if raw is not None:
        vol = run.load(raw)
        raw_vs = np.asarray(vol.voxel_size_nm) if isinstance(vol, Volume) else None
    for name, rec in ran.items():
        notes = rec.get("notes") or {}
        dom = notes.get("model_domain") or {}
        mvs = dom.get("voxel_size_nm")
        if mvs is not None and raw_vs is not None and not np.allclose(mvs, raw_vs, rtol=0.1):
            out.append(f"stage {name}: the model was trained at {mvs} nm, the data is "
                       f"{raw_vs.tolist()} nm (z, y, x): expect weaker predictions")  # fmt: skip
        for k, v in notes.items():
            if "warn" in k or k == "nonfinite_replaced":
                out.append(f"stage {name}: {k}: {_plain(v)}")  # escaped once, when shown
    return out


def _stages_html(run: Run, timing: ReportFigure | None) -> str:
    rows = []
    for name, rec in (run.manifest.get("stages") or {}).items():
        peak = rec.get("peak_memory_mb", rec.get("peak_rss_mb"))
        outs = ", ".join(html.escape(p) for p in (rec.get("outputs") or {}))
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(rec.get('kind', '')))}</td>"
            f"<td>{html.escape(str(rec.get('plugin', '')))}</td>"
            f"<td class='num'>{float(rec.get('seconds', 0)):.2f}</td>"
            f"<td class='num'>{'' if peak is None else f'{float(peak):.0f}'}</td>"
            f"<td>{outs}</td><td>{_notes_html(rec.get('notes') or {})}</td></tr>"
        )
    total = sum(float(r.get("seconds", 0)) for r in (run.manifest.get("stages") or {}).values())
    table = ("<table><tr><th>stage</th><th>kind</th><th>plugin</th><th>seconds</th>"
             "<th>peak MB</th><th>outputs</th><th>notes</th></tr>" + "".join(rows)
             + f"<tr><th colspan=3>total</th><th class='num'>{total:.1f}</th><th colspan=3></th>"
             "</tr></table>")  # fmt: skip
    if all("peak_memory_mb" not in r and "peak_rss_mb" not in r
           for r in (run.manifest.get("stages") or {}).values()):  # fmt: skip
        table += "<p class='meta'>Peak memory per stage is not recorded in this manifest.</p>"
    return table + (_img(timing) if timing else "")


def _scores_html(run: Run) -> str:
    dirs = _directions()
    rows = []
    for a in run.artifacts:
        if a.type != "scores":
            continue
        rec = run.load(a)
        if not isinstance(rec, ScoreRecord):
            continue
        ins = run.config_inputs(a.stage)
        what = ", ".join(f"{k} = {v}" for k, v in ins.items() if k in ("prediction", "truth"))
        rows.append(f"<tr><th colspan=4>{html.escape(a.key)} <span class='meta'>"
                    f"({html.escape(rec.metric)}{'; ' + html.escape(what) if what else ''})"
                    "</span></th></tr>")  # fmt: skip
        for key, value in rec.values.items():
            d = direction_of(dirs, rec.metric, key)
            arrow = {"lower": "<span class='down'>&#8595;</span>",
                     "higher": "<span class='up'>&#8593;</span>"}.get(d or "", "")  # fmt: skip
            cls = " class='head'" if key in HEADLINE else ""
            rows.append(f"<tr{cls}><td>{html.escape(key)}</td><td class='num'>{_number(value)}</td>"
                        f"<td>{arrow}</td><td>{html.escape(metric_reading(rec.metric, key, d))}"
                        "</td></tr>")  # fmt: skip
    if not rows:
        return "<p>No scores: the input had no ground truth, or no scorer ran.</p>"
    return ("<table><tr><th>metric</th><th>value</th><th></th><th>reading</th></tr>"
            + "".join(rows) + "</table>")  # fmt: skip


def _img(f: ReportFigure) -> str:
    return (f"<figure><img src='report/{html.escape(f.name)}' width='{f.width}' "
            f"height='{f.height}' alt='{html.escape(f.caption)}'><figcaption>"
            f"{html.escape(f.caption)}</figcaption></figure>")  # fmt: skip


def _guarded(
    run: Run, title: str, fn: Callable[[Run, Path], list[Section]], folder: Path
) -> Iterator[Section]:
    try:
        yield from fn(run, folder)
    except Exception as exc:  # one broken section must not lose the rest of the report
        run.warnings.append(f"{title}: not drawn ({type(exc).__name__}: {exc})")


def write_report(run_dir: str | os.PathLike[str]) -> Path:
    """Write ``report.html`` and ``report/*.png`` into ``run_dir``; returns the HTML path."""
    root = Path(run_dir)
    run = Run.open(root)
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=".report-", dir=root))
    try:
        sections: list[Section] = []
        parts = [("sections", _em_sections), ("sweep", _sweep_sections),
                 ("regions", _calcium_sections), ("clusters", _cluster_sections)]  # fmt: skip
        for title, fn in parts:
            sections.extend(_guarded(run, title, fn, tmp))
        timing = _timing_figure(run, tmp)
        warnings = _warnings(run) + run.warnings
        run.store.close()
        m = run.manifest
        cfg = m.get("config") or {}
        name = html.escape(str(cfg.get("name", root.name)))
        inp = m.get("input") or {}
        body = [f"<h1>syntk run: {name}</h1>",
                f"<p class='meta'>{html.escape(str(root.resolve()))}<br>input "
                f"<code>{html.escape(str(inp.get('path', '?')))}</code>; started "
                f"{html.escape(str(m.get('started', '?')))}, finished "
                f"{html.escape(str(m.get('finished', '-')))}; status "
                f"<b>{html.escape(str(m.get('status', '?')))}</b>; syntk "
                f"{html.escape(str(m.get('syntk_version', '?')))}</p>"]  # fmt: skip
        if warnings:
            body.append("<h2>Warnings</h2>")
            body += [f"<div class='warn'>{html.escape(w)}</div>" for w in warnings]
        body += ["<h2>Scores</h2>", _scores_html(run)]
        for s in sections:
            body.append(f"<h2>{html.escape(s.title)}</h2>{s.html}")
            body += [_img(f) for f in s.figures]
        pictures = _written_pictures(run)
        if pictures:
            body += ["<h2>Pictures written by the run</h2>", pictures]
        body += ["<h2>Stages</h2>", _stages_html(run, timing)]
        body.append(f"<p class='meta'>report written in {time.perf_counter() - t0:.1f} s by "
                    "<code>syntk report</code>.</p>")  # fmt: skip
        page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
                f"<title>syntk run {name}</title><style>{CSS}</style></head><body>"
                + "\n".join(body) + "</body></html>\n")  # fmt: skip
        atomic_replace_dir(tmp, root / "report")
        html_path = root / "report.html"
        atomic_write_text(html_path, page)
        return html_path
    finally:
        run.store.close()
        shutil.rmtree(tmp, ignore_errors=True)
