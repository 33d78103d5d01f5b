"""Synapse clustering stages: ``autoencoder-kmeans`` (clusterer) and ``phantom-synapse-types``
(loader of a phantom's true synapse types as a ``clusters`` artifact, for the ``clustering``
scorer)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import Field

from synapse_toolkit import __version__
from synapse_toolkit.data import ClusterAssignments, PartnerTable, Volume
from synapse_toolkit.errors import DataError
from synapse_toolkit.stages import Clusterer, Loader, ModelOptions, Port, StageOptions
from synapse_toolkit.synapses import CLEFT_THRESHOLD

if TYPE_CHECKING:
    from synapse_toolkit.synapses.clustering import PatchEncoder
    from synapse_toolkit.synapses.patches import SynapseSites


class AutoencoderKMeans(Clusterer["AutoencoderKMeans.Options"]):
    """Oriented synapse patches → ONNX autoencoder codes → k-means. ``k`` given, or chosen in
    ``[k_min, k_max]`` by silhouette among stable values of k. The shipped encoders straighten
    each patch on the contact: on the centre of the cleft when a cleft probability is wired
    (``clefts``; use it with a predicted segmentation, whose boundaries wander across the cleft),
    else on the pre/post segment boundary of ``labels`` (a proofread segmentation).
    Writes an embedding scatter and a patch gallery (PNG) into the run directory."""

    name: ClassVar[str] = "autoencoder-kmeans"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "k-means on autoencoder codes of oriented synapse patches"
    inputs: ClassVar[Mapping[str, Port]] = {
        "raw": Port("intensity", "EM intensities"),
        "partners": Port("partners", "synapses (annotated or predicted)"),
        "labels": Port(
            "labels",
            "segmentation the patches are straightened on (without clefts)",
            required=False,
        ),
        "clefts": Port(
            "map",
            "cleft probability the patches are straightened on (used before labels)",
            required=False,
            channels=1,
        ),
        "truth": Port("clusters", "true types, only to colour the pictures", required=False),
    }
    outputs: ClassVar[Mapping[str, Port]] = {
        "clusters": Port("clusters", "cluster per synapse id, with the encoder's codes"),
    }

    class Options(ModelOptions):
        model: str = Field("synapses/cluster_encoder", description="Registry name of the encoder.")
        k: int | None = Field(None, ge=1, description="Number of clusters (none: choose).")
        k_min: int = Field(2, ge=2)
        k_max: int = Field(8, ge=2)
        min_stability: float = Field(0.8, ge=0, le=1, description="Stability floor for k.")
        seed: int = Field(0, description="k-means seed.")
        cleft_threshold: float = Field(
            CLEFT_THRESHOLD,
            gt=0,
            lt=1,
            description="With `clefts`: the cleft probability above which a "
            "patch row counts as crossing the cleft (rows are centred on those values).",
        )
        pictures: bool = Field(True, description="Write clusters_embedding.png and "
                               "clusters_gallery.png into the run directory.")  # fmt: skip

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.synapses.clustering import PatchEncoder, choose_k, kmeans, summary
        from synapse_toolkit.synapses.patches import synapse_sites
        from syntk_synapses import _resolved_model

        raw: Volume = inputs["raw"]
        partners: PartnerTable = inputs["partners"]
        o = self.options
        path = _resolved_model(self, o.model, o.model_path, o.sha256, raw=raw)
        encoder = PatchEncoder(path, n_threads=self.context.n_threads)
        sites = synapse_sites(partners)
        if len(sites) == 0:  # no synapses found (e.g. none predicted): nothing to cluster
            self.context.record("clustering", {"k": 0, "n_synapses": 0})
            return {"clusters": ClusterAssignments(sites.synapse_id, np.zeros(0, np.int64))}
        codes = encoder.encode_sites(raw, sites, inputs.get("labels"), cleft=inputs.get("clefts"),
                                     cleft_threshold=o.cleft_threshold)  # fmt: skip
        choice = None
        if o.k is not None:
            k = o.k
        else:
            choice = choose_k(codes, (o.k_min, o.k_max), min_stability=o.min_stability,
                              seed=o.seed)  # fmt: skip
            k = choice.k
        labels = kmeans(codes, k, seed=o.seed)
        aligned = ("not straightened" if not encoder.aligns_on_contact
                   else f"cleft > {o.cleft_threshold:g}" if inputs.get("clefts") is not None
                   else "segment boundary")  # fmt: skip
        self.context.record("clustering", {"k": int(k), "n_synapses": len(sites),
                                           "straightened_on": aligned,
                                           **summary(choice)})  # fmt: skip
        if o.pictures and len(sites):
            self._pictures(codes, labels, encoder, raw, sites, inputs)
        return {"clusters": ClusterAssignments(sites.synapse_id, labels, codes)}

    def _pictures(self, codes: np.ndarray, labels: np.ndarray, encoder: PatchEncoder,
                  raw: Volume, sites: SynapseSites, inputs: Mapping[str, Any]) -> None:  # fmt: skip
        from synapse_toolkit.synapses.cluster_pictures import plot_embedding, plot_gallery
        from synapse_toolkit.synapses.clustering import gallery_members

        truth: ClusterAssignments | None = inputs.get("truth")
        known = None
        if truth is not None:
            lookup = dict(zip(truth.synapse_ids.tolist(), truth.labels.tolist(), strict=True))
            known = np.asarray([lookup.get(int(i), -1) for i in sites.synapse_id])
        base = self.context.run_dir or self.context.scratch_dir
        plot_embedding(codes, labels, base / "clusters_embedding.png", truth=known)
        members = gallery_members(labels)  # only the gallery's synapses are cut again
        patches = encoder.patches(raw, sites.take(members), inputs.get("labels"),
                                  inputs.get("clefts"), self.options.cleft_threshold)  # fmt: skip
        values, counts = np.unique(labels, return_counts=True)
        plot_gallery(patches[:, 0] if patches.ndim == 5 else patches, labels[members],
                     base / "clusters_gallery.png",
                     sizes=dict(zip(values.tolist(), counts.tolist(), strict=True)))  # fmt: skip


class PhantomSynapseTypes(Loader["PhantomSynapseTypes.Options"]):
    """The true synapse type of every synapse of a phantom file (HDF5 or zarr), keyed like the
    annotated partners (synapse id = pre-site annotation id). A file without phantom truth gives
    no output (scorers wired to it are skipped)."""

    name: ClassVar[str] = "phantom-synapse-types"
    version: ClassVar[str] = __version__
    description: ClassVar[str] = "phantom synapse types as clusters (truth for clustering)"
    outputs: ClassVar[Mapping[str, Port]] = {
        "types": Port("clusters", "true type per synapse", required=False),
    }

    class Options(StageOptions):
        path: Path | None = Field(None, description="Read this file instead of the pipeline input.")

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        from synapse_toolkit.phantom.store import read_phantom_truth

        path = self.options.path or self.context.input_path
        if path is None:
            raise DataError(f"stage {self.context.stage_name}: no input file")
        try:
            truth = read_phantom_truth(path)
        except DataError as exc:
            self.context.logger.info("%s: %s", self.context.stage_name, exc)
            return {}
        s = truth.synapses
        return {"types": ClusterAssignments(s["pre_site_id"], s["type"])}
