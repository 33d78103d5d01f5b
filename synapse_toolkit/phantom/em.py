"""Synthetic serial-section EM volumes with complete ground truth (CREMI layout).

>>> ph = EMPhantom(EMPhantomParams(shape=(8, 96, 96), seed=3))
>>> data = ph.generate()                       # CremiData in memory (one shot)
>>> ph.write("phantom.zarr")                   # block by block, never the whole volume in memory

The geometry (neurons, synapses, organelles, artefacts) is decided globally from the seed when the
object is built; every voxel is then a pure function of its global position, so any block can be
rendered alone (with a fixed context) and blocks agree exactly with a one-shot generation.
See ``docs/phantom.md`` for the model, the frozen defaults and the file layout.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from synapse_toolkit.blockwise import iter_blocks
from synapse_toolkit.data import Annotations, Volume
from synapse_toolkit.io.cremi import CremiData
from synapse_toolkit.phantom.artefacts import apply_defect, section_defects, section_shifts
from synapse_toolkit.phantom.cells import NeuronField
from synapse_toolkit.phantom.organelles import place_mitochondria
from synapse_toolkit.phantom.params import PHANTOM_DEFAULTS_VERSION, EMPhantomParams
from synapse_toolkit.phantom.render import CONTEXT, Scene, render_window
from synapse_toolkit.phantom.synapses import Synapse, Vesicles, place_decoys, place_synapses

Window = tuple[slice, slice, slice]

#: Block shape used when streaming a volume to disk.
DEFAULT_BLOCK = (16, 512, 512)


class EMPhantom:
    """One phantom volume: global geometry + block renderer + ground truth."""

    def __init__(self, params: EMPhantomParams | None = None, **overrides: Any) -> None:
        p = params or EMPhantomParams()
        if overrides:
            p = p.replace(**overrides)
        self.params = p
        self.field = NeuronField(p)
        self.synapses: list[Synapse] = place_synapses(p, self.field)
        decoys, transport = place_decoys(p, self.field, self.synapses)
        vesicles = Vesicles.concat([s.vesicles for s in self.synapses] + [transport])
        self.scene = Scene(p, self.field, self.synapses, decoys, vesicles,
                           place_mitochondria(p, self.field))  # fmt: skip
        self.shifts = section_shifts(p)
        self.defects = section_defects(p)

    # -- rendering ---------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        s = self.params.shape
        return (s[0], s[1], s[2])

    def _check_window(self, window: Window) -> Window:
        out = []
        for s, n in zip(window, self.shape, strict=True):
            start, stop, _ = s.indices(n)
            if stop <= start:
                raise ValueError(f"empty window {window}")
            out.append(slice(start, stop))
        return (out[0], out[1], out[2])

    def render(self, window: Window | None = None) -> dict[str, np.ndarray]:
        """``raw`` (uint8), ``neuron_ids`` and ``clefts`` (uint64) of a window of the volume."""
        w = self._check_window(window or (slice(None),) * 3)
        cz, cy, cx = CONTEXT
        shifts = self.shifts[w[0]]
        m = int(np.abs(shifts).max()) if shifts.size else 0
        read: Window = (
            slice(w[0].start - cz, w[0].stop + cz),
            slice(w[1].start - cy - m, w[1].stop + cy + m),
            slice(w[2].start - cx - m, w[2].stop + cx + m),
        )
        labels = self.field.label_window(read)
        intensity, clefts = render_window(labels, read, self.scene)
        raw_r = np.clip(np.round(intensity * 255.0), 0, 255).astype(np.uint8)
        ny, nx = w[1].stop - w[1].start, w[2].stop - w[2].start
        inner = (slice(cz, cz + w[0].stop - w[0].start), slice(cy + m, cy + m + ny),
                 slice(cx + m, cx + m + nx))  # fmt: skip
        raw = np.empty((w[0].stop - w[0].start, ny, nx), np.uint8)
        for i, z in enumerate(range(w[0].start, w[0].stop)):
            dy, dx = (int(v) for v in self.shifts[z])
            y0, x0 = cy + m - dy, cx + m - dx
            section = raw_r[cz + i, y0 : y0 + ny, x0 : x0 + nx]
            if z in self.defects:
                section = apply_defect(
                    section, self.defects[z], z, w[1].start, w[2].start, self.params
                )
            raw[i] = section
        return {
            "raw": raw,
            "neuron_ids": np.ascontiguousarray(labels[inner]),
            "clefts": np.ascontiguousarray(clefts[inner]),
        }

    def iter_blocks(
        self, block_shape: tuple[int, int, int] = DEFAULT_BLOCK
    ) -> Iterator[tuple[Window, dict[str, np.ndarray]]]:
        """Render the volume block by block: yields (window, arrays)."""
        for b in iter_blocks(self.shape, block_shape):
            w: Window = (b.write[0], b.write[1], b.write[2])
            yield w, self.render(w)

    def generate(self) -> CremiData:
        """The whole phantom in memory (one-shot rendering)."""
        arrays = self.render()
        return self.to_cremi(arrays)

    def to_cremi(self, arrays: dict[str, Any]) -> CremiData:
        vs = self.params.voxel_size_nm
        return CremiData(
            raw=Volume(arrays["raw"], vs, name="raw"),
            neuron_ids=Volume(arrays["neuron_ids"], vs, name="neuron_ids"),
            clefts=Volume(arrays["clefts"], vs, name="clefts"),
            annotations=self.annotations(),
            file_attrs={
                "file_format": "0.2",
                "generator": "syntk phantom em",
                "phantom_defaults_version": PHANTOM_DEFAULTS_VERSION,
            },
        )

    # -- ground truth ------------------------------------------------------------------------
    def annotations(self) -> Annotations:
        """CREMI annotations: a pre site per synapse, a post site per partner; comments carry the
        synapse type (``synapse_type=<k> (<name>); synapse_id=<cleft id>``)."""
        ids: list[int] = []
        types: list[str] = []
        locs: list[np.ndarray] = []
        partners: list[tuple[int, int]] = []
        comments: dict[int, str] = {}
        nid = 1
        type_names = [t.name for t in self.params.types]
        for s in self.synapses:
            name = type_names[s.type_index]
            note = f"synapse_type={s.type_index} ({name}); synapse_id={s.synapse_id}"
            pre = nid
            ids.append(pre)
            types.append(Annotations.PRE)
            locs.append(s.pre_site_nm)
            comments[pre] = note
            nid += 1
            for post_loc in s.post_sites_nm:
                ids.append(nid)
                types.append(Annotations.POST)
                locs.append(post_loc)
                partners.append((pre, nid))
                comments[nid] = note
                nid += 1
        return Annotations(
            ids=np.asarray(ids, np.uint64),
            types=tuple(types),
            locations_nm=np.asarray(locs, np.float64).reshape(-1, 3),
            partners=np.asarray(partners, np.uint64).reshape(-1, 2),
            comments=comments,
        )

    def synapse_table(self) -> dict[str, np.ndarray]:
        """One row per synapse: ids, type, partners' neurons and the drawn morphology."""
        ann = self.annotations()
        pre_ids = ann.ids[np.asarray([t == Annotations.PRE for t in ann.types], bool)]
        s = self.synapses
        return {
            "synapse_id": np.asarray([x.synapse_id for x in s], np.uint64),
            "type": np.asarray([x.type_index for x in s], np.int64),
            "pre_site_id": np.asarray(pre_ids, np.uint64),
            "pre_neuron": np.asarray([x.pre_neuron for x in s], np.uint64),
            "n_posts": np.asarray([len(x.contacts) for x in s], np.int64),
            "contact_nm": np.asarray([x.contacts[0].boundary_nm for x in s], np.float64).reshape(
                -1, 3
            ),
            "normal": np.asarray([x.contacts[0].normal for x in s], np.float64).reshape(-1, 3),
            "vesicle_diameter_nm": np.asarray([x.vesicle_diameter_nm for x in s], np.float64),
            "n_vesicles": np.asarray([x.n_vesicles for x in s], np.int64),
            "n_dense_core": np.asarray([x.n_dense_core for x in s], np.int64),
            "cleft_width_nm": np.asarray([x.cleft_width_nm for x in s], np.float64),
            "cleft_radius_nm": np.asarray([x.cleft_radius_nm for x in s], np.float64),
            "psd_thickness_nm": np.asarray([x.psd_thickness_nm for x in s], np.float64),
        }

    def partner_rows(self) -> np.ndarray:
        """(M, 5) uint64: synapse_id, pre_site_id, post_site_id, pre_neuron, post_neuron."""
        ann = self.annotations()
        rows = []
        k = 0
        for s in self.synapses:
            for post in s.post_neurons:
                pre_id, post_id = ann.partners[k]
                rows.append((s.synapse_id, pre_id, post_id, s.pre_neuron, post))
                k += 1
        return np.asarray(rows, np.uint64).reshape(-1, 5)

    def metadata(self) -> dict[str, Any]:
        """JSON-able description: parameters, type prototypes, artefacts."""
        from dataclasses import asdict

        return {
            "defaults_version": PHANTOM_DEFAULTS_VERSION,
            "params": self.params.to_dict(),
            "synapse_types": [asdict(t) for t in self.params.types],
            "n_neurons": int(self.field.n_neurons),
            "n_synapses": len(self.synapses),
            "n_mitochondria": len(self.scene.mitochondria),
            "n_decoys": len(self.scene.decoys),
            "shift_convention": "raw[z, y, x] == aligned[z, y - dy, x - dx] (pixels)",
            "defects": {str(z): k for z, k in sorted(self.defects.items())},
        }
