"""Rendering one window of the EM phantom from the global geometry.

``render_window`` gets the labels of a window R (the block to write grown by context) and returns
intensities in [0, 1] and cleft labels for R. Values are exact (independent of how a volume is cut
into blocks) in R shrunk by the context; the caller crops to that.
"""

from __future__ import annotations

from dataclasses import dataclass

import edt
import numpy as np
from scipy import ndimage
from scipy.special import expit

from synapse_toolkit.cremi_ids import CLEFT_BACKGROUND
from synapse_toolkit.phantom.cells import NeuronField
from synapse_toolkit.phantom.noise import SineField, hash_unit, rng_for, tile_noise
from synapse_toolkit.phantom.organelles import Mitochondria
from synapse_toolkit.phantom.params import EMPhantomParams
from synapse_toolkit.phantom.synapses import Decoy, Synapse, Vesicles

#: Context (voxels) around a written block: z sections, y/x pixels.
CONTEXT = (2, 24, 24)


STREAM_TEXTURE = 30
STREAM_NOISE = 31
STREAM_FIELDS = 32

_DARK = 0.14  # membranes / PSD intensity
_CLEFT = 0.42  # cleft material intensity


@dataclass
class Scene:
    """Everything global that a window needs."""

    params: EMPhantomParams
    field: NeuronField
    synapses: list[Synapse]
    decoys: list[Decoy]
    vesicles: Vesicles  # all vesicles (synaptic and transport)
    mitochondria: Mitochondria

    def __post_init__(self) -> None:
        rng = rng_for(self.params.seed, STREAM_FIELDS)
        self.texture_field = SineField(rng, 6, (200.0, 900.0))
        self.membrane_field = SineField(rng, 6, (150.0, 600.0))
        n = self.field.n_neurons + 1
        lo, hi = self.params.cytoplasm_range
        self.neuron_intensity = lo + (hi - lo) * hash_unit(np.arange(n), self.params.seed + 7)


def _world(window: tuple[slice, ...], vs: np.ndarray) -> list[np.ndarray]:
    return [np.arange(s.start, s.stop) * v for s, v in zip(window, vs, strict=True)]


def _intersect(box: tuple[slice, ...], window: tuple[slice, ...]) -> tuple[slice, ...] | None:
    out = []
    for b, w in zip(box, window, strict=True):
        lo, hi = max(b.start, w.start), min(b.stop, w.stop)
        if hi <= lo:
            return None
        out.append(slice(lo, hi))
    return tuple(out)


def _local(sl: tuple[slice, ...], window: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(s.start - w.start, s.stop - w.start) for s, w in zip(sl, window, strict=True)
    )


def _box_around(centre_nm: np.ndarray, half_nm: np.ndarray, vs: np.ndarray) -> tuple[slice, ...]:
    lo = np.floor((centre_nm - half_nm) / vs).astype(int)
    hi = np.ceil((centre_nm + half_nm) / vs).astype(int) + 1
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))


def _membranes(labels: np.ndarray, scene: Scene, world: list[np.ndarray]) -> np.ndarray:
    """Membrane opacity: in-plane distance to a label boundary, plus grey smear where the
    boundary runs oblique to the section (the label changes between sections)."""
    p = scene.params
    vs = p.voxel_size_nm
    alpha = np.empty(labels.shape, np.float32)
    for z in range(labels.shape[0]):
        d = edt.edt(np.ascontiguousarray(labels[z]), anisotropy=(vs[1], vs[2]), black_border=False)
        d = np.maximum(d - 0.5 * vs[2], 0.0)
        alpha[z] = np.exp(-((d / p.membrane_width_nm) ** 2))
    oblique = np.zeros(labels.shape, np.float32)
    oblique[1:] += 0.3 * (labels[1:] != labels[:-1])
    oblique[:-1] += 0.3 * (labels[:-1] != labels[1:])
    oblique = ndimage.uniform_filter(oblique, size=(1, 5, 5), mode="nearest")
    alpha = np.maximum(alpha, oblique)
    jitter = scene.membrane_field.grid(*world)
    contrast = 1.0 - p.membrane_contrast_jitter * (0.5 + 0.5 * np.tanh(jitter))
    return (alpha * contrast).astype(np.float32)


def _mitochondria(
    intensity: np.ndarray, labels: np.ndarray, window: tuple[slice, ...], scene: Scene
) -> None:
    m = scene.mitochondria
    vs = np.asarray(scene.params.voxel_size_nm)
    for i in range(len(m)):
        p0, p1, r = m.p0[i], m.p1[i], m.radius[i]
        centre = 0.5 * (p0 + p1)
        half = 0.5 * np.abs(p1 - p0) + r + vs
        sl = _intersect(_box_around(centre, half, vs), window)
        if sl is None:
            continue
        loc = _local(sl, window)
        z, y, x = np.meshgrid(*_world(sl, vs), indexing="ij")
        pts = np.stack([z, y, x], axis=-1)
        axis = p1 - p0
        length2 = max(float(axis @ axis), 1e-9)
        t = np.clip(((pts - p0) @ axis) / length2, 0.0, 1.0)
        dist = np.linalg.norm(pts - (p0 + t[..., None] * axis), axis=-1)
        inside = (dist < r) & (labels[loc] == m.neuron[i])
        if not inside.any():
            continue
        along = t * np.sqrt(length2)
        cristae = 0.5 + 0.5 * np.cos(2 * np.pi * along / 32.0 + m.phase[i] + 0.02 * dist)
        value = 0.40 - 0.10 * cristae * (dist < r - 10.0)
        value = np.where(dist > r - 9.0, 0.2, value)  # outer (double) membrane
        block = intensity[loc]
        block[inside] = value[inside]
        intensity[loc] = block


def _contact_geometry(
    labels: np.ndarray, sl: tuple[slice, ...], window: tuple[slice, ...], inner: int, outer: int,
    centre: np.ndarray, vs: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:  # fmt: skip
    """In-plane signed distance (nm, <0 in ``inner``, >0 in ``outer``) to the inner/outer
    interface in each section (as a cleft is seen and annotated section by section) and the 3D
    distance to ``centre`` for the voxels of ``sl``."""
    sub = labels[_local(sl, window)]
    a, b = sub == inner, sub == outer
    if not a.any() or not b.any():
        return None
    far = np.float32(1e6)
    d_to_b = np.full(sub.shape, far, np.float32)
    d_to_a = np.full(sub.shape, far, np.float32)
    for z in range(sub.shape[0]):
        if a[z].any() and b[z].any():
            d_to_b[z] = edt.edt(np.ascontiguousarray(~b[z]), anisotropy=(vs[1], vs[2]),
                                black_border=False)  # fmt: skip
            d_to_a[z] = edt.edt(np.ascontiguousarray(~a[z]), anisotropy=(vs[1], vs[2]),
                                black_border=False)  # fmt: skip
    half = 0.5 * vs[2]
    s = np.full(sub.shape, np.nan, np.float32)
    s[a] = -(d_to_b[a] - half)
    s[b] = d_to_a[b] - half
    z, y, x = np.meshgrid(*_world(sl, vs), indexing="ij")
    rho = np.sqrt((z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2)
    return s, rho, a, b


def _over(
    alpha: np.ndarray, value: np.ndarray, loc: tuple[slice, ...], a: np.ndarray, v: np.ndarray
) -> None:
    """Composite layer (a, v) over the accumulated premultiplied layer in place."""
    old_a, old_v = alpha[loc], value[loc]
    value[loc] = a * v + (1.0 - a) * old_v
    alpha[loc] = a + (1.0 - a) * old_a


def _synapse_layers(
    labels: np.ndarray, window: tuple[slice, ...], scene: Scene
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Premultiplied synapse/decoy layer (alpha, value), membrane suppression, cleft labels."""
    vs = np.asarray(scene.params.voxel_size_nm)
    shape = labels.shape
    alpha = np.zeros(shape, np.float32)
    value = np.zeros(shape, np.float32)
    suppress = np.zeros(shape, np.float32)
    clefts = np.full(shape, CLEFT_BACKGROUND, np.uint64)
    items: list[tuple[Synapse | None, Decoy | None]] = [(s, None) for s in scene.synapses]
    items += [(None, d) for d in scene.decoys]
    for syn, decoy in items:
        if syn is not None:
            contacts = syn.contacts
        else:
            assert decoy is not None  # each item is a synapse or a decoy
            contacts = [decoy.contact]
        for k, c in enumerate(contacts):
            if syn is not None:
                radius, width, psd = syn.cleft_radius_nm, syn.cleft_width_nm, syn.psd_thickness_nm
                if k > 0:
                    radius *= 0.75
            else:
                assert decoy is not None
                radius, width, psd = decoy.radius_nm, 0.0, decoy.thickness_nm
            reach = radius + 10.0 + width + psd + 12.0  # patch + the band the edt must see
            half = np.array([radius + 10.0, reach, reach])
            sl = _intersect(_box_around(c.boundary_nm, half, vs), window)
            if sl is None:
                continue
            geo = _contact_geometry(labels, sl, window, c.inner, c.outer, c.boundary_nm, vs)
            if geo is None:
                continue
            s, rho, in_a, in_b = geo
            loc = _local(sl, window)
            w_r = np.clip((radius - rho) / 15.0 + 0.5, 0.0, 1.0)
            s0 = np.nan_to_num(s, nan=1e6)
            if syn is not None:
                hw = 0.5 * width
                membranes = np.maximum(
                    np.exp(-(((s0 + hw) / 3.2) ** 2)), np.exp(-(((s0 - hw) / 3.2) ** 2))
                )
                psd_a = 0.85 * expit((s0 - hw) / 2.0) * expit(-(s0 - hw - psd) / 3.0)
                psd_a *= s0 < hw + psd + 20.0  # exact zero beyond: block-independent
                tbar = 0.55 * np.exp(-(((s0 + hw + 14.0) / 8.0) ** 2)) * (rho < 0.45 * radius)
                dark = np.maximum(np.maximum(membranes, psd_a), tbar)
                cleft_a = 0.6 * (np.abs(s0) < hw)
                a = (w_r * np.maximum(dark, cleft_a)).astype(np.float32)
                v = np.where(dark >= cleft_a, _DARK, _CLEFT).astype(np.float32)
                sup = w_r * (np.abs(s0) < hw + 7.0)
                in_cleft = (in_a | in_b) & (rho <= radius) & (np.abs(s0) <= max(hw, 4.0) + 2.5)
                block = clefts[loc]
                block[in_cleft] = np.uint64(syn.synapse_id)
                clefts[loc] = block
            else:
                dark = 0.8 * np.exp(-((s0 / psd) ** 2))
                a = (w_r * dark).astype(np.float32)
                v = np.full(a.shape, _DARK, np.float32)
                sup = w_r * (np.abs(s0) < 6.0)
            _over(alpha, value, loc, a, v)
            suppress[loc] = np.maximum(suppress[loc], sup)
    return alpha, value, suppress, clefts


def _vesicles(
    intensity: np.ndarray, labels: np.ndarray, window: tuple[slice, ...], scene: Scene
) -> None:
    """Vesicles as dark rings with a light lumen (dense-core: dark core), clipped to their neuron.

    A 40-nm section shows the projection of the sphere slab, so the ring radius is the largest
    cross-section within the section."""
    ves = scene.vesicles
    if not len(ves.diameters):
        return
    vs = np.asarray(scene.params.voxel_size_nm)
    lo = np.array([w.start for w in window]) * vs
    hi = np.array([w.stop - 1 for w in window]) * vs
    rad = ves.diameters / 2
    half_t = vs[0] / 2
    near = np.all(
        (ves.centres > lo - rad[:, None] - vs) & (ves.centres < hi + rad[:, None] + vs), axis=1
    )
    idx = np.flatnonzero(near)
    if not len(idx):
        return
    pairs_v, pairs_z, r_eff = [], [], []
    for i in idx:
        z0 = int(np.floor((ves.centres[i, 0] - rad[i] - half_t) / vs[0]))
        z1 = int(np.ceil((ves.centres[i, 0] + rad[i] + half_t) / vs[0]))
        for z in range(max(z0, window[0].start), min(z1 + 1, window[0].stop)):
            dz = max(0.0, abs(z * vs[0] - ves.centres[i, 0]) - half_t)
            if dz < rad[i] - 2.0:
                pairs_v.append(i)
                pairs_z.append(z)
                r_eff.append(np.sqrt(rad[i] ** 2 - dz**2))
    if not pairs_v:
        return
    pv_all, pz_all, re_all = np.asarray(pairs_v), np.asarray(pairs_z), np.asarray(r_eff)
    h = int(np.ceil(re_all.max() / vs[1])) + 2
    off = np.arange(-h, h + 1)
    layers = [np.zeros(labels.size, np.float32) for _ in range(3)]
    for a in range(0, len(pv_all), 512):  # chunks bound the memory of the patch arrays
        pv, pz, re = pv_all[a : a + 512], pz_all[a : a + 512], re_all[a : a + 512]
        cy = np.round(ves.centres[pv, 1] / vs[1]).astype(int)
        cx = np.round(ves.centres[pv, 2] / vs[2]).astype(int)
        yy = cy[:, None, None] + off[None, :, None]
        xx = cx[:, None, None] + off[None, None, :]
        rho = np.sqrt((yy * vs[1] - ves.centres[pv, 1][:, None, None]) ** 2
                      + (xx * vs[2] - ves.centres[pv, 2][:, None, None]) ** 2)  # fmt: skip
        r = re[:, None, None]
        # hard cut-offs keep every value independent of the patch size
        ring = np.where(rho < r + 5.0, 0.85 * np.exp(-(((rho - (r - 2.5)) / 2.6) ** 2)), 0.0)
        lumen = 0.35 * (rho < r - 3.0)
        dcv = ves.dense_core[pv][:, None, None] & (rho < r)
        core = np.where(dcv, 0.9 * expit(-(rho - 0.62 * r) / 2.0), 0.0)
        zz = np.broadcast_to((pz - window[0].start)[:, None, None], rho.shape)
        ly = np.broadcast_to(yy - window[1].start, rho.shape)
        lx = np.broadcast_to(xx - window[2].start, rho.shape)
        ok = (ly >= 0) & (ly < labels.shape[1]) & (lx >= 0) & (lx < labels.shape[2])
        zz, ly, lx = zz[ok], ly[ok], lx[ok]
        owner = np.broadcast_to(ves.neuron[pv][:, None, None], rho.shape)[ok]
        own = labels[zz, ly, lx] == owner
        flat = np.ravel_multi_index((zz[own], ly[own], lx[own]), labels.shape)
        for acc, layer in zip(layers, (lumen, core, ring), strict=True):
            np.maximum.at(acc, flat, layer[ok][own].astype(np.float32))
    a_lumen, a_core, a_ring = (acc.reshape(labels.shape) for acc in layers)
    intensity *= 1 - a_lumen
    intensity += 0.86 * a_lumen
    intensity *= 1 - a_core
    intensity += 0.2 * a_core
    intensity *= 1 - a_ring
    intensity += 0.16 * a_ring


def render_window(
    labels: np.ndarray, window: tuple[slice, ...], scene: Scene
) -> tuple[np.ndarray, np.ndarray]:
    """Intensity (float32, [0, 1]-ish) and cleft labels for ``window`` whose labels are given."""
    p = scene.params
    vs = np.asarray(p.voxel_size_nm)
    world = _world(window, vs)
    # cytoplasm: per-neuron grey, smooth and granular texture
    # float32 throughout (NumPy 2 keeps float32 for python-float * float32 array; the stubs
    # still say float64, hence the plain ndarray annotation)
    intensity: np.ndarray = scene.neuron_intensity[labels.astype(np.int64)].astype(np.float32)
    grain = ndimage.gaussian_filter(tile_noise(p.seed, STREAM_TEXTURE, window), (0, 1.6, 1.6))
    intensity += (p.texture_amplitude * 1.6) * grain
    intensity += (0.5 * p.texture_amplitude) * scene.texture_field.grid(*world).astype(np.float32)
    _mitochondria(intensity, labels, window, scene)
    syn_alpha, syn_value, suppress, clefts = _synapse_layers(labels, window, scene)
    mem = _membranes(labels, scene, world) * (1.0 - suppress)
    intensity = intensity * (1.0 - mem) + p.membrane_intensity * mem
    intensity = intensity * (1.0 - syn_alpha) + syn_value
    _vesicles(intensity, labels, window, scene)
    # imaging: blur, signal-dependent noise, section brightness
    intensity = ndimage.gaussian_filter(intensity, (0, p.blur_sigma_px, p.blur_sigma_px))
    noise = ndimage.gaussian_filter(tile_noise(p.seed, STREAM_NOISE, window), (0, 0.7, 0.7)) * 2.5
    intensity += p.noise_sigma * noise * (0.6 + 0.5 * intensity)
    zi = np.arange(window[0].start, window[0].stop)
    gain = 1.0 + p.section_gain_jitter * (2 * hash_unit(zi + 1000, p.seed + 11) - 1)
    bias = 0.5 * p.section_gain_jitter * (2 * hash_unit(zi + 1000, p.seed + 12) - 1)
    intensity = intensity * gain[:, None, None].astype(np.float32) + bias[:, None, None].astype(
        np.float32
    )
    return intensity.astype(np.float32), clefts
