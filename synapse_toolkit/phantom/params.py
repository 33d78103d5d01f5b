"""Frozen, versioned phantom defaults (see ``docs/phantom.md``).

Changing any default changes the difficulty every later measurement is made on, so the defaults
are versioned: bump :data:`PHANTOM_DEFAULTS_VERSION` (and the numbers pinned in
``tests/test_phantom_em.py``) whenever a default or the rendering model changes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from synapse_toolkit.errors import SyntkError

#: Version of the defaults below and of the rendering model. Stored in every phantom file.
PHANTOM_DEFAULTS_VERSION = 1


@dataclass(frozen=True)
class SynapseType:
    """Morphological prototype of one synapse type (all lengths in nm).

    Each synapse draws its own values around the prototype (``*_jitter`` = relative standard
    deviation), so types overlap a little, as in tissue.
    """

    name: str
    vesicle_diameter_nm: float  # outer diameter of clear synaptic vesicles
    vesicle_count: int  # mean number of vesicles in the cloud
    cloud_depth_nm: float  # how far the cloud reaches into the pre-synaptic neuron
    dense_core_count: int  # mean number of dense-core vesicles (0 = none)
    dense_core_diameter_nm: float
    cleft_width_nm: float  # distance between pre- and post-synaptic membranes
    cleft_radius_nm: float  # half the cleft length (radius of the contact patch)
    psd_thickness_nm: float  # post-synaptic density thickness
    jitter: float = 0.08


#: The type prototypes; ``n_types = K`` uses the first K. Values follow the classical
#: Gray type I / type II distinction (round 40-50 nm vesicles, wide cleft, thick PSD vs.
#: smaller vesicles, narrow cleft, thin PSD) plus a peptidergic type with dense-core vesicles.
SYNAPSE_TYPES: tuple[SynapseType, ...] = (
    SynapseType("asymmetric (Gray I)", 45.0, 70, 260.0, 0, 80.0, 20.0, 170.0, 38.0),
    SynapseType("symmetric (Gray II)", 35.0, 55, 220.0, 0, 80.0, 14.0, 140.0, 12.0),
    SynapseType("peptidergic (dense-core)", 40.0, 35, 240.0, 5, 85.0, 17.0, 150.0, 24.0),
    SynapseType("sparse small-vesicle", 33.0, 25, 180.0, 0, 80.0, 18.0, 120.0, 26.0),
    SynapseType("large-vesicle dense", 50.0, 95, 300.0, 1, 90.0, 22.0, 200.0, 32.0),
    SynapseType("dense-core rich", 42.0, 20, 200.0, 12, 95.0, 16.0, 130.0, 18.0),
)


@dataclass(frozen=True)
class EMPhantomParams:
    """Everything that determines an EM phantom (together with the seed).

    Axis order z, y, x; lengths in nm unless the name says ``_px``.
    """

    shape: tuple[int, int, int] = (20, 256, 256)
    voxel_size_nm: tuple[float, float, float] = (40.0, 4.0, 4.0)
    seed: int = 0
    # -- synapses -----------------------------------------------------------------------------
    n_synapses: int | None = None  # None: density_per_um3 x volume
    synapse_density_per_um3: float = 18.0
    n_types: int = 3
    polyadic_fraction: float = 0.3  # fraction of synapses with more than one post partner
    max_posts: int = 4
    min_synapse_distance_nm: float = 260.0
    # -- neurons ------------------------------------------------------------------------------
    neurite_radius_median_nm: float = 80.0
    neurite_radius_sigma: float = 0.5  # log-normal sigma
    neurite_radius_range_nm: tuple[float, float] = (40.0, 420.0)
    fill_fraction: float = 0.8  # occupancy at which neurite growth stops
    branch_probability: float = 0.012  # per 40-nm step
    warp_amplitude_nm: float = 22.0  # irregularity of membranes
    margin_nm: tuple[float, float, float] = (400.0, 700.0, 700.0)
    # -- appearance (intensities in [0, 1] before 8-bit conversion) ---------------------------
    membrane_width_nm: float = 5.5
    membrane_intensity: float = 0.22
    membrane_contrast_jitter: float = 0.35  # per-location variation of membrane darkness
    cytoplasm_range: tuple[float, float] = (0.56, 0.78)
    mitochondria_per_um3: float = 9.0
    distractor_vesicle_clusters_per_um3: float = 5.0  # transport vesicles away from synapses
    adherens_per_um3: float = 8.0  # dark symmetric contacts without vesicles (decoys)
    blur_sigma_px: float = 1.0
    noise_sigma: float = 0.085
    texture_amplitude: float = 0.07
    section_gain_jitter: float = 0.06
    # -- artefacts ----------------------------------------------------------------------------
    misalign: bool = False
    misalign_jitter_px: float = 1.5  # random-walk step std of per-section shifts
    misalign_jump_probability: float = 0.08
    misalign_jump_px: int = 24
    defects: bool = False
    missing_section_probability: float = 0.04
    defective_section_probability: float = 0.06
    # -- bookkeeping --------------------------------------------------------------------------
    defaults_version: int = PHANTOM_DEFAULTS_VERSION

    def __post_init__(self) -> None:
        if len(self.shape) != 3 or min(self.shape) < 1:
            raise SyntkError(f"phantom shape must be 3 positive sizes (z, y, x), got {self.shape}")
        if len(self.voxel_size_nm) != 3 or min(self.voxel_size_nm) <= 0:
            raise SyntkError(
                "phantom voxel size must be 3 positive values (z, y, x nm), "
                f"got {self.voxel_size_nm}"
            )
        if not 1 <= self.n_types <= len(SYNAPSE_TYPES):
            raise SyntkError(
                f"phantom synapse types must be between 1 and {len(SYNAPSE_TYPES)}, "
                f"got {self.n_types}"
            )
        if self.n_synapses is not None and self.n_synapses < 0:
            raise SyntkError(f"phantom synapse count must be >= 0, got {self.n_synapses}")
        if self.seed < 0:
            raise SyntkError(f"phantom seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "voxel_size_nm", tuple(float(v) for v in self.voxel_size_nm))

    @property
    def volume_um3(self) -> float:
        v = 1.0
        for s, r in zip(self.shape, self.voxel_size_nm, strict=True):
            v *= s * r / 1000.0
        return v

    @property
    def types(self) -> tuple[SynapseType, ...]:
        return SYNAPSE_TYPES[: self.n_types]

    def synapse_count(self) -> int:
        if self.n_synapses is not None:
            return int(self.n_synapses)
        return round(self.synapse_density_per_um3 * self.volume_um3)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> EMPhantomParams:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class CalciumPhantomParams:
    """A two-photon calcium movie (neurofinder layout). Intensities in raw 16-bit counts."""

    frames: int = 300
    shape: tuple[int, int] = (128, 128)
    n_cells: int = 40
    seed: int = 0
    rate_hz: float = 7.0
    cell_radius_px: tuple[float, float] = (4.0, 6.5)
    baseline: float = 330.0  # neuropil/background counts
    cell_brightness: tuple[float, float] = (90.0, 260.0)  # resting soma excess over background
    spike_rate_hz: float = 0.15
    transient_amplitude: tuple[float, float] = (0.6, 2.5)  # dF/F per spike
    decay_time_s: float = 1.2
    rise_time_s: float = 0.12
    neuropil_amplitude: float = 0.12
    drift_fraction: float = 0.08
    counts_per_photon: float = 160.0  # shot noise: counts = Poisson(F / gain) x gain
    read_noise: float = 12.0
    defaults_version: int = PHANTOM_DEFAULTS_VERSION

    def __post_init__(self) -> None:
        if self.frames < 1 or len(self.shape) != 2 or min(self.shape) < 8:
            raise SyntkError(
                f"calcium phantom needs >= 1 frame and a shape of at least 8x8, got "
                f"frames={self.frames} shape={self.shape}"
            )
        if self.n_cells < 0:
            raise SyntkError(f"calcium phantom cell count must be >= 0, got {self.n_cells}")
        if self.seed < 0:
            raise SyntkError(f"calcium phantom seed must be >= 0, got {self.seed}")
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
