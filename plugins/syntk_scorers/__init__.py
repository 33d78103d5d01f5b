"""Built-in scorer stages: CREMI neurons, clefts and partners, synapse overlap, neurofinder and
clustering. Each takes a ``prediction`` and a ``truth`` port and emits ``scores``
(a :class:`~synapse_toolkit.data.ScoreRecord`); the metrics are library functions in
:mod:`synapse_toolkit.metrics`, imported when a stage runs (plugin discovery stays light: the
neuron counting kernels need numba).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from synapse_toolkit import __version__
from synapse_toolkit.cremi_ids import NO_LABEL
from synapse_toolkit.data import (
    Annotations,
    ClusterAssignments,
    PartnerTable,
    Regions,
    ScoreRecord,
    Volume,
)
from synapse_toolkit.errors import DataError
from synapse_toolkit.hookspecs import hookimpl
from synapse_toolkit.stages import Port, Scorer, StageOptions

_SCORES = {"scores": Port("scores", "metric values (ScoreRecord)")}


def _labels(stage: Scorer, inputs: Mapping[str, Any], port: str) -> Volume:
    vol = inputs.get(port)
    if not isinstance(vol, Volume) or not vol.is_labels:
        raise DataError(
            f"stage {stage.context.stage_name}: input {port!r} must be a 3D label volume"
        )
    return vol


def _block_shape(stage: Scorer, vol: Volume) -> tuple[int, int, int] | None:
    """The run's block shape for volumes on disk (counts and border masks are exact for any
    block: a border mask reads its margin), None for in-memory arrays (counted directly)."""
    if isinstance(vol.data, np.ndarray):
        return None
    return stage.context.block_shape


class CremiNeuronScorer(Scorer["CremiNeuronScorer.Options"]):
    """VOI split/merge, adapted Rand and CREMI score of a neuron segmentation."""

    name: ClassVar[str] = "cremi-neurons"
    file_inputs: ClassVar[Mapping[str, tuple[str, str]]] = {
        "prediction": ("prediction", "neuron_ids"), "truth": ("truth", "neuron_ids"),
    }  # fmt: skip
    lower_is_better: ClassVar[tuple[str, ...]] = (
        "voi_split", "voi_merge", "voi_total", "adapted_rand", "cremi_score",
    )  # fmt: skip
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "CREMI neuron ids: VOI (bits), adapted Rand, CREMI score"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("labels", "predicted segmentation", grid="in"),
        "truth": Port("labels", "ground-truth neuron ids (2**64-1 = ignore)", grid="in"),
    }
    outputs: ClassVar[Mapping[str, Port]] = _SCORES

    class Options(StageOptions):
        border_threshold_nm: float = Field(
            25.0, ge=0, description="Ignore truth boundaries within this distance (nm); CREMI's "
            "evaluation uses 25, 0 switches the mask off.",
        )  # fmt: skip

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        truth, pred = _labels(self, inputs, "truth"), _labels(self, inputs, "prediction")
        from synapse_toolkit.metrics.cremi_neurons import score_neuron_ids

        s = score_neuron_ids(
            truth, pred, border_threshold_nm=self.options.border_threshold_nm,
            block_shape=_block_shape(self, truth), n_threads=self.context.n_threads,
        )  # fmt: skip
        return {"scores": ScoreRecord(self.name, s.as_dict(), dict(self.options.model_dump()))}


class CremiCleftScorer(Scorer["CremiCleftScorer.Options"]):
    """False positives/negatives and distance statistics of a cleft detection."""

    name: ClassVar[str] = "cremi-clefts"
    file_inputs: ClassVar[Mapping[str, tuple[str, str]]] = {
        "prediction": ("prediction", "clefts"), "truth": ("truth", "clefts"),
    }  # fmt: skip
    lower_is_better: ClassVar[tuple[str, ...]] = (
        "false_positives", "false_negatives", "fp_mean", "fn_mean", "cremi_score",
    )  # fmt: skip
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "CREMI clefts: FP/FN counts, distance stats, cleft score"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("labels", "predicted clefts (2**64-1 = background)", grid="in"),
        "truth": Port("labels", "ground-truth clefts (2**64-2 = invalid region)", grid="in"),
    }
    outputs: ClassVar[Mapping[str, Port]] = _SCORES

    class Options(StageOptions):
        threshold_nm: float = Field(200.0, ge=0, description="FP/FN distance threshold (nm).")
        reference_artifacts: bool = Field(
            False, description="Reproduce cremi_python's numbers when one volume has no cleft."
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        truth, pred = _labels(self, inputs, "truth"), _labels(self, inputs, "prediction")
        opts = self.options
        from synapse_toolkit.metrics.cremi_clefts import score_clefts

        s = score_clefts(
            truth, pred, threshold_nm=opts.threshold_nm,
            reference_artifacts=opts.reference_artifacts, block_shape=_block_shape(self, truth),
        )  # fmt: skip
        return {"scores": ScoreRecord(self.name, s.as_dict(), dict(opts.model_dump()))}


class CremiPartnerScorer(Scorer["CremiPartnerScorer.Options"]):
    """F-score of synaptic partner pairs (CREMI minimum-cost matching)."""

    name: ClassVar[str] = "cremi-partners"
    file_inputs: ClassVar[Mapping[str, tuple[str, str]]] = {
        "prediction": ("prediction", "partners"), "truth": ("truth", "annotations"),
        "truth_neuron_ids": ("truth", "neuron_ids"),
    }  # fmt: skip
    higher_is_better: ClassVar[tuple[str, ...]] = ("fscore", "precision", "recall", "tp")
    lower_is_better: ClassVar[tuple[str, ...]] = ("fp", "fn")
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "CREMI synaptic partners: F-score, precision, recall, FP, FN"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("partners", "predicted pairs (PartnerTable or Annotations)"),
        "truth": Port("annotations", "ground-truth CREMI annotations"),
        "truth_neuron_ids": Port("labels", "ground-truth neuron ids for the label check"),
    }
    outputs: ClassVar[Mapping[str, Port]] = _SCORES

    class Options(StageOptions):
        matching_threshold_nm: float = Field(400.0, gt=0, description="Matching distance (nm).")
        rounding: Literal["half_away", "half_even"] = Field(
            "half_away", description="nm->voxel rounding: challenge server (Python 2) or Python 3."
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        pred = inputs.get("prediction")
        if isinstance(pred, PartnerTable):
            pred = pred.to_annotations()
        truth = inputs.get("truth")
        if isinstance(truth, PartnerTable):
            truth = truth.to_annotations()
        if not isinstance(pred, Annotations) or not isinstance(truth, Annotations):
            raise DataError(f"stage {self.context.stage_name}: prediction and truth must be "
                            "partner tables or CREMI annotations")  # fmt: skip
        seg = _labels(self, inputs, "truth_neuron_ids")
        opts = self.options
        from synapse_toolkit.metrics.cremi_partners import pairs_outside, score_partners

        s = score_partners(
            pred, truth, seg, matching_threshold=opts.matching_threshold_nm,
            rounding=opts.rounding,
        )  # fmt: skip
        details = {**opts.model_dump(), "matches": [list(m) for m in s.matches]}
        outside = pairs_outside(truth, seg, opts.rounding)
        if outside:  # e.g. a crop that kept the whole file's annotations
            self.context.logger.warning(
                "stage %s: %d of %d truth partner pairs have a site outside the neuron_ids "
                "volume and count as missed", self.context.stage_name, outside, len(truth.partners)
            )  # fmt: skip
            details["truth_pairs_outside_volume"] = outside
        return {"scores": ScoreRecord(self.name, s.as_dict(), details)}


class SynapseOverlapScorer(Scorer["SynapseOverlapScorer.Options"]):
    """Synapse detection by voxel overlap (best match each way)."""

    name: ClassVar[str] = "synapse-overlap"
    file_inputs: ClassVar[Mapping[str, tuple[str, str]]] = {
        "prediction": ("prediction", "clefts"), "truth": ("truth", "clefts"),
    }  # fmt: skip
    higher_is_better: ClassVar[tuple[str, ...]] = ("precision", "recall", "f1")
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "synapse detection by overlap: precision, recall, F1"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("labels", "detected synapse labels", grid="in"),
        "truth": Port("labels", "ground-truth synapse labels", grid="in"),
    }
    outputs: ClassVar[Mapping[str, Port]] = _SCORES

    class Options(StageOptions):
        threshold: float = Field(0.5, ge=0, le=1, description="Minimum overlap measure of a match.")
        measure: Literal["iou", "coverage"] = Field("iou", description="Overlap measure.")
        background: int = Field(
            NO_LABEL, ge=0, description="Background id (CREMI clefts: 2**64-1)."
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        truth, pred = _labels(self, inputs, "truth"), _labels(self, inputs, "prediction")
        opts = self.options
        from synapse_toolkit.metrics.overlap import score_overlap

        s = score_overlap(
            truth, pred, threshold=opts.threshold, measure=opts.measure,
            background=opts.background, block_shape=_block_shape(self, truth),
            n_threads=self.context.n_threads,
        )  # fmt: skip
        return {"scores": ScoreRecord(self.name, s.as_dict(), dict(opts.model_dump()))}


class NeurofinderScorer(Scorer["NeurofinderScorer.Options"]):
    """neurofinder ROI scores (greedy centre matching)."""

    name: ClassVar[str] = "neurofinder"
    higher_is_better: ClassVar[tuple[str, ...]] = (
        "recall", "precision", "combined", "inclusion", "exclusion",
    )  # fmt: skip
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "neurofinder: recall, precision, combined, inclusion, exclusion"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("regions", "detected ROIs"),
        "truth": Port("regions", "ground-truth ROIs"),
    }
    outputs: ClassVar[Mapping[str, Port]] = _SCORES

    class Options(StageOptions):
        threshold_px: float = Field(5.0, gt=0, description="Centre distance must be below this.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        truth, pred = inputs.get("truth"), inputs.get("prediction")
        if not isinstance(truth, Regions) or not isinstance(pred, Regions):
            raise DataError(
                f"stage {self.context.stage_name}: truth and prediction must be regions"
            )
        from synapse_toolkit.metrics.neurofinder import score_neurofinder

        s = score_neurofinder(truth, pred, self.options.threshold_px)
        return {"scores": ScoreRecord(self.name, s.as_dict(), dict(self.options.model_dump()))}


class ClusteringScorer(Scorer["ClusteringScorer.Options"]):
    """Clustering of synapses against known types, joined on synapse ids. When the clustered
    synapses are found ones (not the annotated), give ``partners`` (what was clustered) and
    ``truth_annotations``: each found synapse then takes the type of the annotated synapse whose
    pre site is nearest (within ``match_nm``); unmatched ones are left out and counted."""

    name: ClassVar[str] = "clustering"
    higher_is_better: ClassVar[tuple[str, ...]] = (
        "ari", "nmi", "ami", "homogeneity", "completeness", "accuracy",
    )  # fmt: skip
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "clustering: ARI, NMI, AMI, homogeneity, completeness, accuracy"
    inputs: ClassVar[Mapping[str, Port]] = {
        "prediction": Port("clusters", "cluster label per synapse"),
        "truth": Port("clusters", "known type per synapse"),
        "partners": Port("partners", "the clustered synapses (found ones)", required=False),
        "truth_annotations": Port("annotations", "annotated synapses", required=False),
    }
    outputs: ClassVar[Mapping[str, Port]] = _SCORES

    class Options(StageOptions):
        match_nm: float = Field(
            400.0, gt=0, description="Pre-site distance for matching found to annotated synapses."
        )

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        truth, pred = inputs.get("truth"), inputs.get("prediction")
        if not isinstance(truth, ClusterAssignments) or not isinstance(pred, ClusterAssignments):
            raise DataError(
                f"stage {self.context.stage_name}: truth and prediction must be clusters"
            )
        details: dict[str, Any] = {}
        found, ann = inputs.get("partners"), inputs.get("truth_annotations")
        if (found is None) != (ann is None):
            raise DataError(f"stage {self.context.stage_name}: give both partners and "
                            "truth_annotations, or neither")  # fmt: skip
        if found is not None:
            truth, details = self._matched(truth, found, ann)
        common, ti, pi = np.intersect1d(truth.synapse_ids, pred.synapse_ids, return_indices=True)
        from synapse_toolkit.metrics.clustering import score_clustering

        s = score_clustering(truth.labels[ti], pred.labels[pi])
        details = {"n_truth": len(truth.labels), "n_prediction": len(pred.labels),
                   "n_common": int(common.size), **details}  # fmt: skip
        return {"scores": ScoreRecord(self.name, s.as_dict(), details)}

    def _matched(
        self, truth: ClusterAssignments, found: Any, ann: Any
    ) -> tuple[ClusterAssignments, dict[str, Any]]:
        """True types re-keyed by the found synapses' ids (nearest annotated pre site)."""
        from synapse_toolkit.metrics.clustering import match_nearest
        from synapse_toolkit.synapses.patches import synapse_sites

        if isinstance(ann, Annotations):
            ann = PartnerTable.from_annotations(ann)
        if not isinstance(found, PartnerTable) or not isinstance(ann, PartnerTable):
            raise DataError(f"stage {self.context.stage_name}: partners and truth_annotations "
                            "must be partner tables or CREMI annotations")  # fmt: skip
        true_sites, found_sites = synapse_sites(ann), synapse_sites(found)
        lookup = dict(zip(truth.synapse_ids.tolist(), truth.labels.tolist(), strict=True))
        known = np.asarray([int(i) in lookup for i in true_sites.synapse_id], bool)
        ref_ids = true_sites.synapse_id[known]
        j = match_nearest(found_sites.pre_nm, true_sites.pre_nm[known], self.options.match_nm)
        keep = j >= 0
        labels = np.asarray([lookup[int(ref_ids[k])] for k in j[keep]], np.int64)
        matched = ClusterAssignments(found_sites.synapse_id[keep], labels)
        return matched, {"n_found": len(found_sites), "n_found_matched": int(keep.sum())}


SCORERS = (CremiNeuronScorer, CremiCleftScorer, CremiPartnerScorer, SynapseOverlapScorer,
           NeurofinderScorer, ClusteringScorer)  # fmt: skip


@hookimpl
def syntk_register_stages(registry: Any) -> None:
    for cls in SCORERS:
        registry.add_scorer(cls)
