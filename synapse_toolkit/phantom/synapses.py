"""Synapses (and synapse-like decoys) placed on neuron contacts; their ground truth and looks.

A synapse has one pre-synaptic neuron A and one or more post-synaptic neurons B_j, each with a
contact point b_j on the A/B_j surface and a normal n_j pointing from A into B_j. Its features:

- a cleft: the A/B_j interface within ``cleft_radius`` of b_j; pre and post membranes drawn
  ``cleft_width`` apart with grey cleft material between (labelled in the cleft volume);
- a post-synaptic density (dark band of ``psd_thickness`` inside B_j);
- a vesicle cloud inside A only (clear vesicles of ``vesicle_diameter``; dense-core vesicles for
  peptidergic types), so polarity is visible;
- annotation sites: the pre site inside A and one post site inside each B_j, 40-70 nm from the
  interface, snapped to voxel centres.

Decoys are look-alikes that are *not* synapses: symmetric dark contacts without vesicles
(puncta adhaerentia) and clusters of transport vesicles away from contacts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from synapse_toolkit.phantom.cells import NeuronField
from synapse_toolkit.phantom.contacts import Contact, contact_is_extended, march, random_directions
from synapse_toolkit.phantom.noise import rng_for
from synapse_toolkit.phantom.params import EMPhantomParams, SynapseType

STREAM_SYNAPSES = 10
STREAM_DECOYS = 11


@dataclass
class Vesicles:
    """Vesicle centres (N, 3) nm, diameters (N,) nm, dense-core flags and owning neuron."""

    centres: np.ndarray
    diameters: np.ndarray
    dense_core: np.ndarray
    neuron: np.ndarray

    @classmethod
    def empty(cls) -> Vesicles:
        return cls(np.zeros((0, 3)), np.zeros(0), np.zeros(0, bool), np.zeros(0, np.uint64))

    @classmethod
    def concat(cls, items: list[Vesicles]) -> Vesicles:
        items = [v for v in items if len(v.diameters)]
        if not items:
            return cls.empty()
        return cls(
            np.concatenate([v.centres for v in items]),
            np.concatenate([v.diameters for v in items]),
            np.concatenate([v.dense_core for v in items]),
            np.concatenate([v.neuron for v in items]),
        )


@dataclass
class Synapse:
    """One synapse (polyadic when it has several posts). Lengths in nm, positions world nm."""

    synapse_id: int
    type_index: int
    pre_neuron: int
    contacts: list[Contact]  # one per post partner; contact.inner == pre_neuron
    pre_site_nm: np.ndarray
    post_sites_nm: list[np.ndarray]
    vesicle_diameter_nm: float
    cleft_width_nm: float
    cleft_radius_nm: float
    psd_thickness_nm: float
    vesicles: Vesicles = field(default_factory=Vesicles.empty)

    @property
    def post_neurons(self) -> list[int]:
        return [c.outer for c in self.contacts]

    @property
    def n_vesicles(self) -> int:
        return int((~self.vesicles.dense_core).sum())

    @property
    def n_dense_core(self) -> int:
        return int(self.vesicles.dense_core.sum())


@dataclass
class Decoy:
    """A symmetric dark contact without vesicles (not annotated)."""

    contact: Contact
    radius_nm: float
    thickness_nm: float


class _PointSet:
    """Points with a cell hash, to ask "is any point closer than ``radius``?" in O(1)."""

    def __init__(self, radius: float) -> None:
        self.radius = float(radius)
        self.cells: dict[tuple[int, int, int], list[np.ndarray]] = {}

    def _key(self, p: np.ndarray) -> tuple[int, int, int]:
        k = np.floor(p / self.radius).astype(int)
        return (int(k[0]), int(k[1]), int(k[2]))

    def add(self, p: np.ndarray) -> None:
        self.cells.setdefault(self._key(p), []).append(p)

    def any_closer(self, p: np.ndarray) -> bool:
        kz, ky, kx = self._key(p)
        near = [q for dz in (-1, 0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
                for q in self.cells.get((kz + dz, ky + dy, kx + dx), ())]  # fmt: skip
        return bool(near) and bool(
            np.min(np.linalg.norm(np.asarray(near) - p, axis=1)) < self.radius
        )


def _snap(points: np.ndarray, voxel_size: np.ndarray) -> np.ndarray:
    return np.round(points / voxel_size) * voxel_size


def _interior(params: EMPhantomParams, rng: np.random.Generator, n: int) -> np.ndarray:
    """Random points inside the volume, away from its faces where possible."""
    vs = np.asarray(params.voxel_size_nm)
    extent = np.asarray(params.shape) * vs
    pad = np.minimum(np.array([2 * vs[0], 160.0, 160.0]), extent * 0.2)
    lo, hi = pad, np.maximum(extent - vs - pad, pad + 1e-6)
    return lo + rng.random((n, 3)) * (hi - lo)


def _site(
    field_: NeuronField,
    boundary: np.ndarray,
    normal: np.ndarray,
    sign: float,
    label: int,
    vs: np.ndarray,
) -> np.ndarray | None:
    """A voxel-centred site 35-85 nm from the interface inside neuron ``label`` and inside the
    volume."""
    cands = np.array(
        [_snap(boundary + sign * d * normal, vs) for d in (55.0, 45.0, 70.0, 35.0, 85.0)]
    )
    top = (np.asarray(field_.params.shape) - 1) * vs
    ok = (field_.label_at(cands) == label) & np.all((cands >= 0) & (cands <= top), axis=1)
    return cands[int(np.argmax(ok))] if ok.any() else None


def _draw(proto: SynapseType, rng: np.random.Generator) -> dict[str, float]:
    j = proto.jitter

    def g(v: float) -> float:
        return float(v * np.clip(1.0 + j * rng.normal(), 0.6, 1.4))

    return {
        "vesicle_diameter_nm": g(proto.vesicle_diameter_nm),
        "cleft_width_nm": g(proto.cleft_width_nm),
        "cleft_radius_nm": g(proto.cleft_radius_nm),
        "psd_thickness_nm": g(proto.psd_thickness_nm),
        "vesicle_count": float(rng.poisson(proto.vesicle_count)),
        "dense_core_count": float(rng.poisson(proto.dense_core_count))
        if proto.dense_core_count
        else 0.0,
        "cloud_depth_nm": g(proto.cloud_depth_nm),
        "dense_core_diameter_nm": g(proto.dense_core_diameter_nm),
    }


def _frame(n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ref = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = np.cross(n, ref)
    e1 /= np.linalg.norm(e1)
    return e1, np.cross(n, e1)


def place_vesicle_cloud(
    field_: NeuronField,
    rng: np.random.Generator,
    neuron: int,
    anchor: np.ndarray,
    normal: np.ndarray,
    count: int,
    diameter: float,
    depth: float,
    spread: float,
    dense_core: bool = False,
    min_depth: float = 0.0,
) -> Vesicles:
    """Non-overlapping vesicles inside ``neuron`` behind ``anchor`` (opposite to ``normal``)."""
    if count <= 0:
        return Vesicles.empty()
    e1, e2 = _frame(normal)
    m = 4 * count + 8
    radius = diameter / 2
    # depth biased towards the membrane (docked and reserve pool)
    d = radius + 8.0 + min_depth + depth * rng.beta(1.2, 2.2, m)
    lat = rng.normal(size=(m, 2)) * spread
    sizes = np.clip(rng.normal(1.0, 0.07, m), 0.8, 1.25) * diameter
    centres = anchor[None] - d[:, None] * normal[None] + lat[:, :1] * e1 + lat[:, 1:] * e2
    # the whole vesicle must lie inside the neuron: centre + 6 probes at radius + 6 nm
    dirs = np.array([normal, -normal, e1, -e1, e2, -e2])
    probes = centres[:, None, :] + (sizes[:, None, None] / 2 + 6.0) * dirs[None]
    pts = np.concatenate([centres[:, None, :], probes], axis=1).reshape(-1, 3)
    inside = (field_.label_at(pts).reshape(m, 7) == neuron).all(axis=1)
    chosen: list[int] = []
    for i in np.flatnonzero(inside):
        if len(chosen) >= count:
            break
        if chosen:
            dist = np.linalg.norm(centres[chosen] - centres[i], axis=1)
            if np.any(dist < (sizes[chosen] + sizes[i]) / 2 + 2.0):
                continue
        chosen.append(int(i))
    idx = np.asarray(chosen, dtype=np.int64)
    return Vesicles(
        centres[idx],
        sizes[idx],
        np.full(len(idx), dense_core),
        np.full(len(idx), neuron, np.uint64),
    )


def place_synapses(params: EMPhantomParams, field_: NeuronField) -> list[Synapse]:
    """Choose synapse sites deterministically from the seed (greedy, min-distance separated)."""
    target = params.synapse_count()
    if target == 0:
        return []
    rng = rng_for(params.seed, STREAM_SYNAPSES)
    vs = np.asarray(params.voxel_size_nm)
    types = params.types
    top = (np.asarray(params.shape) - 1) * vs
    synapses: list[Synapse] = []
    taken = _PointSet(params.min_synapse_distance_nm)
    for _attempt in range(30):
        m = max(64, 6 * (target - len(synapses)))
        starts = _interior(params, rng, m)
        dirs = random_directions(rng, m)
        contacts = march(field_, starts, dirs)
        valid = [c for c in contacts if c is not None]
        extended = contact_is_extended(field_, valid, 40.0)
        for c, ok in zip(valid, extended, strict=True):
            if len(synapses) >= target:
                break
            if not ok or np.any(c.boundary_nm < 0) or np.any(c.boundary_nm > top):
                continue
            if taken.any_closer(c.boundary_nm):
                continue
            pre = _site(field_, c.boundary_nm, c.normal, -1.0, c.inner, vs)
            post = _site(field_, c.boundary_nm, c.normal, 1.0, c.outer, vs)
            if pre is None or post is None:
                continue
            t = int(rng.integers(len(types)))
            drawn = _draw(types[t], rng)
            contacts_ = [c]
            posts = [post]
            if rng.random() < params.polyadic_fraction and params.max_posts > 1:
                extra = _extra_posts(
                    field_, rng, c, pre, int(rng.integers(2, params.max_posts + 1)) - 1
                )
                for c2 in extra:
                    p2 = _site(field_, c2.boundary_nm, c2.normal, 1.0, c2.outer, vs)
                    if p2 is not None and all(np.linalg.norm(p2 - q) > 60 for q in posts):
                        contacts_.append(c2)
                        posts.append(p2)
            syn = Synapse(
                synapse_id=len(synapses) + 1,
                type_index=t,
                pre_neuron=c.inner,
                contacts=contacts_,
                pre_site_nm=pre,
                post_sites_nm=posts,
                vesicle_diameter_nm=drawn["vesicle_diameter_nm"],
                cleft_width_nm=drawn["cleft_width_nm"],
                cleft_radius_nm=drawn["cleft_radius_nm"],
                psd_thickness_nm=drawn["psd_thickness_nm"],
            )
            normal = np.mean([k.normal for k in contacts_], axis=0)
            normal /= max(np.linalg.norm(normal), 1e-9)
            anchor = c.boundary_nm - 0.5 * syn.cleft_width_nm * c.normal
            clear = place_vesicle_cloud(
                field_, rng, c.inner, anchor, normal, int(drawn["vesicle_count"]),
                syn.vesicle_diameter_nm, drawn["cloud_depth_nm"], 0.55 * syn.cleft_radius_nm,
            )  # fmt: skip
            dcv = place_vesicle_cloud(
                field_, rng, c.inner, anchor, normal, int(drawn["dense_core_count"]),
                drawn["dense_core_diameter_nm"], drawn["cloud_depth_nm"], 0.8 * syn.cleft_radius_nm,
                dense_core=True, min_depth=40.0,
            )  # fmt: skip
            syn.vesicles = _drop_overlaps(clear, dcv)
            synapses.append(syn)
            taken.add(c.boundary_nm)
        if len(synapses) >= target:
            break
    return synapses


def _drop_overlaps(clear: Vesicles, dcv: Vesicles) -> Vesicles:
    """Dense-core vesicles win over clear vesicles they overlap."""
    if len(dcv.diameters) and len(clear.diameters):
        d = np.linalg.norm(clear.centres[:, None] - dcv.centres[None], axis=2)
        keep = ~np.any(d < (clear.diameters[:, None] + dcv.diameters[None]) / 2 + 2.0, axis=1)
        clear = Vesicles(clear.centres[keep], clear.diameters[keep], clear.dense_core[keep],
                         clear.neuron[keep])  # fmt: skip
    return Vesicles.concat([clear, dcv])


def _extra_posts(
    field_: NeuronField, rng: np.random.Generator, first: Contact, pre_site: np.ndarray, n: int
) -> list[Contact]:
    """Further neurons touching the pre-synaptic neuron near the first contact (polyadic)."""
    k = 24
    base = np.arctan2(first.normal[2], first.normal[1])
    ang = base + rng.choice([-1.0, 1.0], k) * rng.uniform(0.5, 1.9, k)
    dz = rng.uniform(-0.3, 0.3, k)
    dirs = np.stack([dz, np.cos(ang), np.sin(ang)], axis=1)
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    starts = np.repeat(pre_site[None], k, axis=0)
    found: list[Contact] = []
    seen = {first.inner, first.outer}
    for c in march(field_, starts, dirs, max_nm=320.0):
        if c is None or c.inner != first.inner or c.outer in seen:
            continue
        if np.linalg.norm(c.boundary_nm - first.boundary_nm) > 380.0:
            continue
        if not contact_is_extended(field_, [c], 30.0)[0]:
            continue
        found.append(c)
        seen.add(c.outer)
        if len(found) >= n:
            break
    return found


def place_decoys(
    params: EMPhantomParams, field_: NeuronField, synapses: list[Synapse]
) -> tuple[list[Decoy], Vesicles]:
    """Symmetric contacts without vesicles, and transport-vesicle clusters off contacts."""
    rng = rng_for(params.seed, STREAM_DECOYS)
    vol = params.volume_um3
    n_adh = int(rng.poisson(params.adherens_per_um3 * vol))
    n_ves = int(rng.poisson(params.distractor_vesicle_clusters_per_um3 * vol))
    syn_pts = _PointSet(200.0)
    for s in synapses:
        for c in s.contacts:
            syn_pts.add(c.boundary_nm)
    decoys: list[Decoy] = []
    if n_adh:
        starts = _interior(params, rng, 4 * n_adh + 8)
        contacts = [c for c in march(field_, starts, random_directions(rng, len(starts))) if c]
        ext = contact_is_extended(field_, contacts, 35.0)
        for c, ok in zip(contacts, ext, strict=True):
            if len(decoys) >= n_adh:
                break
            if not ok:
                continue
            if syn_pts.any_closer(c.boundary_nm):
                continue
            decoys.append(Decoy(c, float(rng.uniform(60, 140)), float(rng.uniform(10, 18))))
    clusters: list[Vesicles] = []
    if n_ves:
        starts = _interior(params, rng, n_ves)
        labels = field_.label_at(starts)
        for s, lab in zip(starts, labels, strict=True):
            normal = random_directions(rng, 1, 1.0)[0]
            clusters.append(
                place_vesicle_cloud(
                    field_,
                    rng,
                    int(lab),
                    s,
                    normal,
                    int(rng.integers(4, 14)),
                    float(rng.uniform(38, 60)),
                    60.0,
                    45.0,
                    dense_core=bool(rng.random() < 0.15),
                )
            )
    return decoys, Vesicles.concat(clusters)
