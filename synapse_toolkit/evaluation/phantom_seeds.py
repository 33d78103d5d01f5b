"""Which phantom seeds the shipped models and settings have seen, and for what: one registry.

Every benchmark that reads phantom volumes asks this module before it reads them, so that no
setting is chosen on a held-out seed and no held-out figure comes from a seed a model or setting
has seen. Three roles:

- **training**: the networks learned from these volumes (never scored);
- **development**: checkpoints, settings and defaults were chosen on these (selection, and
  figures labelled as development figures);
- **held out**: scored once for a shipped choice, never used to choose anything.

Seeds in none of the three are unused: a new held-out set comes from them, and a benchmark that
selects on new seeds must first list them here as development seeds. Two phantom families have
their own seed spaces: ``em`` (``syntk phantom em``, ``train_detectors.phantom_file``: neurons,
clefts, partners) and ``clustering`` (``train_cluster_encoder.phantom_synapses``, typed synapses).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Family = Literal["em", "clustering"]


def _span(first: int, last: int) -> frozenset[int]:
    return frozenset(range(first, last + 1))


@dataclass(frozen=True)
class SeedRoles:
    """Training, development and held-out seeds of one phantom family (disjoint sets)."""

    training: frozenset[int]
    development: frozenset[int]
    held_out: frozenset[int]

    def role(self, seed: int) -> str:
        """``"training"``, ``"development"``, ``"held out"`` or ``"unused"``."""
        if seed in self.training:
            return "training"
        if seed in self.development:
            return "development"
        if seed in self.held_out:
            return "held out"
        return "unused"


ROLES: dict[Family, SeedRoles] = {
    "em": SeedRoles(
        # 1001-1012: clefts, polarity and synful U-Nets; 1101-1130: pruner and synful;
        # 1131-1190: a further polarity fine-tune (tried); 2001-2004:
        # neurons/phantom_affinities (2004 its training-time validation)
        training=_span(1001, 1012) | _span(1101, 1190) | _span(2001, 2004),
        # 1201-1208: pruner checkpoint, candidate / cleft / synful settings, phantom fragments;
        # 9091-9098: synful checkpoint and settings, the main job's assigner (held out once
        # before); 9401-9408: the polarity fine-tune; 9601-9608: emsynconn settings; 9975-9990:
        # the partner stage's component de-duplication (a second development check)
        development=_span(1201, 1208)
        | _span(9091, 9098)
        | _span(9401, 9408)
        | _span(9601, 9608)
        | _span(9975, 9990),
        # 3001-3099: eval_synapses / eval_phantom_neurons / phantom fragments' held-out figures;
        # 9201-9208, 9301-9308, 9501-9508, 9701-9708, 9801-9808, 9911-9926 and 9927-9942: the
        # partner tables, scored once each; 9943-9950 and 9951-9958: the main job's clustering
        # (contact alignment on the predicted cleft; its threshold), scored once each;
        # 9959-9974: the type-centred synful + polarity pair (issue 19), scored once
        held_out=_span(3001, 3099)
        | _span(9201, 9208)
        | _span(9301, 9308)
        | _span(9501, 9508)
        | _span(9701, 9708)
        | _span(9801, 9808)
        | _span(9911, 9926)
        | _span(9927, 9942)
        | _span(9943, 9950)
        | _span(9951, 9958)
        | _span(9959, 9974),
    ),
    "clustering": SeedRoles(
        training=_span(2001, 2012),
        development=_span(2101, 2108),
        held_out=_span(3101, 3103) | _span(3201, 3205),
    ),
}


def _seen(seeds: Iterable[int], family: Family, roles: tuple[str, ...]) -> list[int]:
    table = ROLES[family]
    return sorted({s for s in seeds if table.role(s) in roles})


def check_selection_seeds(seeds: Iterable[int], family: Family = "em") -> None:
    """Refuse (``SystemExit``) seeds a selection may not read: only development seeds choose."""
    seeds = list(seeds)
    bad = _seen(seeds, family, ("training", "held out", "unused"))
    if bad:
        roles = ", ".join(f"{s} ({ROLES[family].role(s)})" for s in bad)
        raise SystemExit(
            f"--seeds: {roles}: settings and checkpoints are chosen on development seeds only "
            "(register new ones in synapse_toolkit/evaluation/phantom_seeds.py first)"
        )


def check_report_seeds(
    seeds: Iterable[int], family: Family = "em", allow_development: bool = False
) -> None:
    """Refuse (``SystemExit``) seeds a reported figure may not come from: training seeds, and
    development seeds unless ``allow_development`` (figures then labelled as development)."""
    roles = ("training",) if allow_development else ("training", "development")
    bad = _seen(seeds, family, roles)
    if bad:
        named = ", ".join(f"{s} ({ROLES[family].role(s)})" for s in bad)
        hint = "" if allow_development else " (development figures: pass --dev)"
        raise SystemExit(f"--seeds: {named} were seen in training or selection{hint}")
