"""Mean-teacher consistency on unlabelled volumes for the affinity trainer (``[semi_supervised]``).

Each training iteration (every ``every``-th) also cuts a crop from an unlabelled volume. The
teacher, an exponential moving average (EMA) of the student's weights, predicts affinities on a
weakly perturbed view; the student predicts on a strongly perturbed view (a random flip/transpose
and the photometric changes of :func:`synapse_toolkit.nn.augment.apply_photometric`: blur,
intensity, gamma, noise, missing sections). The student's affinities are mapped back to the
teacher's geometry (:func:`invert_geometry`: flips and transposes undone, affinity channels
permuted and shifted) and pulled towards the teacher's where the teacher is confident
(``p > confidence`` or ``p < 1 - confidence``), with class-balanced BCE, weighted by a sigmoid
ramp-up. The labelled loss of the trainer is kept; this module adds a term to it.

Unlabelled crops are read from the files crop by crop (h5py / zarr) and their grey values are
matched to the labelled training volumes' quantiles (:mod:`synapse_toolkit.inference.intensity`),
as inference does for a new volume.

Config (TOML)::

    [semi_supervised]
    weight = 1.0                # consistency weight after ramp-up
    start = 500                 # first iteration with the consistency term (absolute: a run
                                # continued with init_from counts on from its iteration)
    rampup_iterations = 1000    # sigmoid ramp-up exp(-5 (1 - t)^2) after `start`
    ema_decay = 0.99
    confidence = 0.8
    every = 1                   # unlabelled step every N iterations
    [[semi_supervised.volumes]]
    raw = "../shared/data/em/fib-medulla-unlabelled/raw.h5"
    raw_dataset = "raw"
    [semi_supervised.strong]    # AugmentConfig photometric fields for the student's view
    [semi_supervised.weak]      # ... and for the teacher's view
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from synapse_toolkit.errors import ConfigError, DataError
from synapse_toolkit.inference.intensity import unit_scale
from synapse_toolkit.nn.augment import AugmentConfig, apply_photometric

_GEOMETRY_FIELDS = ("flip", "transpose_axes", "elastic_sigma", "margin", "misalign_prob")


class UnlabelledSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    raw: str
    raw_dataset: str = "stack"
    #: [[z0, z1], [y0, y1], [x0, x1]] voxels to use (default: all)
    roi: list[list[int]] | None = None


class SemiSupervisedSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volumes: list[UnlabelledSpec]
    weight: float = 1.0
    start: int = 0
    rampup_iterations: int = 1000
    ema_decay: float = Field(0.99, ge=0.0, lt=1.0)
    confidence: float = Field(0.8, ge=0.5, lt=1.0)
    every: int = Field(1, ge=1)
    balance: bool = True
    #: match unlabelled grey values to the labelled volumes' quantiles (as inference does)
    match_intensity: bool = True
    #: axes the geometric part of the strong view may permute (isotropic data: [0, 1, 2])
    transpose_axes: list[int] = Field(default_factory=lambda: [0, 1, 2])
    flip: bool = True
    strong: dict[str, Any] = Field(
        default_factory=lambda: {
            "intensity_scale": 0.3, "intensity_shift": 0.1, "gamma": 0.4, "noise_std": 0.05,
            "blur_prob": 0.5, "blur_sigma": 1.5, "missing_prob": 0.02,
        }
    )  # fmt: skip
    weak: dict[str, Any] = Field(
        default_factory=lambda: {"intensity_scale": 0.05, "intensity_shift": 0.02}
    )


def _photometric_config(fields: dict[str, Any], where: str) -> AugmentConfig:
    bad = [k for k in fields if k in _GEOMETRY_FIELDS]
    if bad:
        raise ConfigError(f"semi_supervised.{where}: geometric fields {bad} are not allowed here")
    base = {"flip": False, "transpose_axes": (), "intensity_scale": 0.0, "intensity_shift": 0.0}
    return AugmentConfig.from_table({**base, **fields}, f"semi_supervised.{where}")


def consistency_start_note(spec: SemiSupervisedSpec, first_iteration: int) -> str:
    """The line a new run continued from iteration ``first_iteration`` (``init_from``) prints
    when ``start`` counts from before it, i.e. the ramp-up is partly or wholly skipped."""
    w = rampup(first_iteration, spec.start, spec.rampup_iterations)
    return (
        f"note: semi_supervised.start = {spec.start} lies before this run's first iteration "
        f"{first_iteration} (init_from continues the count), so the consistency term starts at "
        f"{w:.0%} of its weight; set start >= {first_iteration} to ramp it up from zero"
    )


def rampup(it: int, start: int, length: int) -> float:
    """0 before ``start``, then ``exp(-5 (1 - t)^2)`` for t rising from 0 to 1 over ``length``."""
    if it < start:
        return 0.0
    if length <= 0:
        return 1.0
    t = min(1.0, (it - start) / length)
    return float(np.exp(-5.0 * (1.0 - t) ** 2))


# -- geometry ---------------------------------------------------------------------------------
def apply_geometry(x: np.ndarray, flips: tuple[bool, ...], perm: tuple[int, ...]) -> np.ndarray:
    """``transpose(flip(x, flips), perm)`` on the last three axes (``perm`` as in np.transpose)."""
    lead = x.ndim - 3
    for axis, f in enumerate(flips):
        if f:
            x = np.flip(x, lead + axis)
    return np.transpose(x, (*range(lead), *(lead + p for p in perm)))


def invert_geometry(
    affs: Any, flips: tuple[bool, ...], perm: tuple[int, ...]
) -> tuple[Any, np.ndarray]:
    """Nearest-neighbour affinities predicted on ``apply_geometry(x, flips, perm)`` mapped back to
    ``x``'s frame: ``(affs_back, valid)`` for (..., 3, z, y, x) torch tensors or arrays.

    Channel ``c`` (offset -1 on axis ``c``) of the transformed frame is the affinity along axis
    ``perm[c]`` of the original; a flipped axis turns edge (i-1, i) into (i, i+1), so that channel
    shifts by one voxel and its first slice has no value (``valid`` is 0 there).
    """
    import torch

    is_np = isinstance(affs, np.ndarray)
    t = torch.from_numpy(np.ascontiguousarray(affs)) if is_np else affs
    lead = t.ndim - 4
    c_dim = lead
    inv = [0, 0, 0]
    for i, p in enumerate(perm):
        inv[p] = i
    sp = [c_dim + 1 + i for i in range(3)]
    # undo the transpose on the spatial axes, then reorder channels
    t = t.permute(*range(c_dim + 1), *(sp[i] for i in inv))
    t = t.index_select(c_dim, torch.as_tensor([inv[c] for c in range(3)], device=t.device))
    shape = tuple(t.shape[c_dim + 1 :])
    valid = np.ones((3, *shape), np.float32)
    flipped = [sp[a] for a, f in enumerate(flips) if f]
    if flipped:
        t = torch.flip(t, flipped)
    chans = []
    for a in range(3):
        ch = t.select(c_dim, a)
        if flips[a]:
            ax = c_dim + a  # spatial axis a in the channel-selected tensor
            ch = torch.roll(ch, 1, ax)
            idx = [slice(None)] * 3
            idx[a] = slice(0, 1)
            index: tuple[int | slice, ...] = (a, *idx)
            valid[index] = 0.0
        chans.append(ch)
    t = torch.stack(chans, c_dim)
    return (t.numpy() if is_np else t), valid


# -- unlabelled crops --------------------------------------------------------------------------
class _Source:
    """One unlabelled volume, read crop by crop."""

    def __init__(self, spec: UnlabelledSpec) -> None:
        from synapse_toolkit.nn.volume_file import DatasetFile

        self.file = DatasetFile(spec.raw, spec.raw_dataset, "semi_supervised.volumes")
        self.spec = spec
        self.path = self.file.path
        self.array = self.file.array
        p = self.path
        if len(self.array.shape) != 3:
            raise DataError(f"{p}:{spec.raw_dataset}: expected (z, y, x), got {self.array.shape}")
        full = self.array.shape
        roi = spec.roi or [[0, s] for s in full]
        self.lo = [int(a) for a, _ in roi]
        self.hi = [int(b) for _, b in roi]
        self.shape = [b - a for a, b in zip(self.lo, self.hi, strict=True)]

    def crop(self, start: list[int], shape: tuple[int, ...]) -> np.ndarray:
        """``shape`` voxels from ``start`` (in the region); an axis shorter than the crop is read
        whole and mirrored at both ends (as the labelled crops are)."""
        box = tuple(
            slice(lo + s, lo + min(s + n, m))
            for lo, s, n, m in zip(self.lo, start, shape, self.shape, strict=True)
        )
        a = self.file.read(box)
        if a.shape != tuple(shape):
            pads = [
                ((n - h) // 2, n - h - (n - h) // 2) for n, h in zip(shape, a.shape, strict=True)
            ]
            a = np.pad(a, pads, mode="symmetric")
        return a


class Consistency:
    """The EMA teacher, the unlabelled crop sampler and the consistency loss."""

    def __init__(
        self,
        spec: SemiSupervisedSpec,
        net: Any,
        input_shape: tuple[int, ...],
        output_shape: tuple[int, ...],
        reference_quantiles: np.ndarray | None,
        seed: int,
        reference_scale: float = 1.0 / 255.0,
    ) -> None:
        """``reference_quantiles``: the labelled volumes' grey-value quantiles, to which each
        unlabelled volume is matched; ``reference_scale``: the factor that brings grey values of
        that range to the network's input range (1/255 for 8-bit labelled volumes)."""
        from synapse_toolkit.inference.intensity import quantiles

        if not spec.volumes:
            raise ConfigError("semi_supervised.volumes: list at least one unlabelled volume")
        self.spec = spec
        self.input_shape = input_shape
        self.output_shape = output_shape
        self.rng = np.random.default_rng(seed + 7919)
        self.strong = _photometric_config(spec.strong, "strong")
        self.weak = _photometric_config(spec.weak, "weak")
        self.sources = [_Source(v) for v in spec.volumes]
        for s in self.sources:
            if any(n < 1 for n in s.shape):
                raise DataError(f"{s.path}: empty region {s.shape} (semi_supervised.volumes)")
        self.reference_scale = float(reference_scale)
        self.maps: list[tuple[np.ndarray, np.ndarray] | None] = []
        for s in self.sources:
            if spec.match_intensity and reference_quantiles is not None:
                box = tuple(slice(a, b) for a, b in zip(s.lo, s.hi, strict=True))
                self.maps.append((quantiles([s.array[box]]), reference_quantiles))
            else:
                self.maps.append(None)
        from synapse_toolkit.nn.ema import ema_copy

        self.teacher = ema_copy(net)
        self.last: dict[str, float] = {}

    def sample(self) -> np.ndarray:
        """A float32 crop (grey values matched, then scaled as the labelled crops are)."""
        from synapse_toolkit.inference.intensity import match

        k = int(self.rng.integers(len(self.sources)))
        s = self.sources[k]
        start = [
            int(self.rng.integers(0, max(n - i, 0) + 1))
            for n, i in zip(s.shape, self.input_shape, strict=True)
        ]
        raw = s.crop(start, self.input_shape)
        r = raw.astype(np.float32)
        qmap = self.maps[k]
        if qmap is not None:  # now in the labelled volumes' grey range, whatever the source dtype
            src, ref = qmap
            return match(r, src, ref) * np.float32(self.reference_scale)
        return r * np.float32(unit_scale(raw.dtype))

    def _geometry(self) -> tuple[tuple[bool, ...], tuple[int, ...]]:
        flips = tuple(bool(self.spec.flip and self.rng.random() < 0.5) for _ in range(3))
        perm = [0, 1, 2]
        axes = list(self.spec.transpose_axes)
        if len(axes) > 1:
            for a, b in zip(axes, self.rng.permutation(axes), strict=True):
                perm[a] = int(b)
        if any(self.input_shape[p] != self.input_shape[i] for i, p in enumerate(perm)):
            perm = [0, 1, 2]
        return flips, tuple(perm)

    def loss(self, net: Any, it: int, device: Any) -> Any:
        """The weighted consistency term for iteration ``it`` (a zero tensor when off)."""
        import torch

        w_ramp = self.spec.weight * rampup(it, self.spec.start, self.spec.rampup_iterations)
        if w_ramp <= 0 or it % self.spec.every:
            self.last = {}
            return torch.zeros((), device=device)
        x = self.sample()
        weak = apply_photometric(x.copy(), self.weak, self.rng)
        flips, perm = self._geometry()
        strong = apply_photometric(
            np.ascontiguousarray(apply_geometry(x, flips, perm)), self.strong, self.rng
        )
        with torch.no_grad():
            t = self.teacher(torch.from_numpy(np.ascontiguousarray(weak[None, None])).to(device))
        s = net(torch.from_numpy(np.ascontiguousarray(strong[None, None], np.float32)).to(device))
        s_back, valid = invert_geometry(s[:, :3], flips, perm)
        t = t[:, :3]
        conf = self.spec.confidence
        confident = ((t > conf) | (t < 1 - conf)).float() * torch.from_numpy(valid).to(device)
        hard = (t > 0.5).float()
        if self.spec.balance:
            w = torch.zeros_like(confident)
            for c in range(3):
                m = confident[:, c]
                pos = (hard[:, c] * m).sum()
                neg = ((1 - hard[:, c]) * m).sum()
                if pos > 0 and neg > 0:
                    w[:, c] = m * (hard[:, c] * (0.5 / pos) + (1 - hard[:, c]) * (0.5 / neg))
                elif m.sum() > 0:
                    w[:, c] = m / m.sum()
            w = w * (confident.sum() / 3)
        else:
            w = confident
        bce = torch.nn.functional.binary_cross_entropy(
            s_back.clamp(1e-6, 1 - 1e-6), t, reduction="none"
        )
        term = (bce * w).sum() / w.sum().clamp(min=1)
        self.last = {
            "consistency": float(term.detach()),
            "confident": float(confident.mean()),
            "ramp": w_ramp,
        }
        return w_ramp * term

    def update_teacher(self, net: Any) -> None:
        """EMA of the student's weights (buffers copied)."""
        from synapse_toolkit.nn.ema import ema_update

        ema_update(self.teacher, net, self.spec.ema_decay)

    def state(self) -> dict[str, Any]:
        """What a resumed run needs: the teacher's weights and the unlabelled sampler's rng."""
        return {"teacher": self.teacher.state_dict(), "rng": self.rng.bit_generator.state}

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state` (a resumed run)."""
        self.teacher.load_state_dict(state["teacher"])
        self.rng.bit_generator.state = state["rng"]


def make_consistency(
    section: dict[str, Any] | None,
    net: Any,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    labelled_raws: list[np.ndarray],
    seed: int,
) -> Consistency | None:
    """The consistency term from a ``[semi_supervised]`` table (``None`` when absent)."""
    if not section:
        return None
    from pydantic import ValidationError

    from synapse_toolkit.inference.intensity import quantiles

    try:
        spec = SemiSupervisedSpec(**section)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"semi_supervised.{where}: {err['msg']}") from exc
    ref = quantiles(labelled_raws) if labelled_raws else None
    # labelled crops are scaled to [0, 1] by their dtype (augment); a mix of dtypes is taken as is
    dtypes = {r.dtype for r in labelled_raws}
    scale = unit_scale(dtypes.pop()) if len(dtypes) == 1 else 1.0
    return Consistency(spec, net, input_shape, output_shape, ref, seed, reference_scale=scale)


# -- validation copies -------------------------------------------------------------------------
def perturb_volume(
    raw: np.ndarray, spec: dict[str, Any], name: str, labels: np.ndarray | None = None
) -> np.ndarray:
    """A validation copy as another acquisition might show it, with grey values matched back to
    the unperturbed volume's quantiles (as inference matches to the training data).

    ``spec`` keys: ``darken`` ([fraction, grey level]: that seeded share of the labelled objects
    with dark cytoplasm, first; needs ``labels``), ``blur_sigma`` (voxels), ``contrast`` (factor
    about the mean), ``noise_std`` (grey values), ``seed``, ``match`` (default true).
    """
    from scipy import ndimage

    from synapse_toolkit.inference.intensity import match, quantiles
    from synapse_toolkit.nn.augment import darken_labelled

    allowed = {"darken", "blur_sigma", "contrast", "noise_std", "seed", "match"}
    bad = sorted(set(spec) - allowed)
    if bad:
        raise ConfigError(f"{name}: perturb keys {bad} unknown (allowed: {sorted(allowed)})")
    if spec.get("darken") is not None:
        dark = spec["darken"]
        if labels is None or not isinstance(dark, list | tuple) or len(dark) != 2:
            raise ConfigError(f"{name}: perturb.darken needs labels and [fraction, grey level]")
        raw = darken_labelled(raw, labels, float(dark[0]), float(dark[1]),
                              int(spec.get("seed", 0)), name)[0]  # fmt: skip
    r = raw.astype(np.float32)
    mean = float(r.mean())
    if spec.get("blur_sigma"):
        r = ndimage.gaussian_filter(r, float(spec["blur_sigma"]))
    if spec.get("contrast") is not None:
        r = mean + (r - mean) * float(spec["contrast"])
    if spec.get("noise_std"):
        rng = np.random.default_rng(int(spec.get("seed", 0)))
        r = r + rng.normal(0, float(spec["noise_std"]), r.shape).astype(np.float32)
    if raw.dtype == np.uint8:
        r = np.clip(np.round(r), 0, 255)
    if spec.get("match", True):
        r = match(r, quantiles([r.astype(raw.dtype)]), quantiles([raw]))
    return np.round(r).astype(np.uint8) if raw.dtype == np.uint8 else r
