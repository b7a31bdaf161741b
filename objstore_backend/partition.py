"""Key ranges: how the GC's shards and listers split the key space without talking to each other.

A :class:`KeyRange` holds the keys ``k`` (relative to the base) with ``after < k <= upto``; so
S3's ``StartAfter`` starts a range exactly where the previous one ends. A :class:`Plan` cuts the
whole key space into *units* at its bounds; every key, foreign ones included, falls in exactly
one unit. Shard ``I/N`` owns a contiguous run of units, balanced by their weights (the keys the
last sweep saw in each, or a discovery's estimates), and its listers each list a contiguous run
of the shard's units in one listing, so N shards together list the bucket about once.

A first plan comes from a discovery (:mod:`objstore_backend.discovery`); later plans from what a
sweep observed (:func:`next_plan`): units cut again at about :func:`unit_target` counted keys, or
the same units weighed by their new counts. Every shard
computes the same ranges from the same plan: every shard of a run uses the plan the run began
with, and a new plan takes effect from the next run (see :mod:`objstore_backend.gc_index`).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KeyRange", "Plan", "balanced_cuts", "next_plan", "rebalance", "unit_target"]

#: A lister gets at least this many keys (ten listing pages) when the weights are key counts.
MIN_KEYS_PER_LISTER = 10_000

#: The share of a bucket's keys that may move between units (a DAG deleted, another grown)
#: before the next run's plan takes the new counts.
DRIFT = 0.1


@dataclass(frozen=True, slots=True)
class KeyRange:
    """The keys ``k`` with ``after < k <= upto``; ``None`` leaves that side open."""

    after: str | None = None
    upto: str | None = None

    def __contains__(self, key: object) -> bool:
        return (
            isinstance(key, str)
            and (self.after is None or key > self.after)
            and (self.upto is None or key <= self.upto)
        )

    def overlaps(self, other: KeyRange) -> bool:
        below = self.upto is not None and other.after is not None and self.upto <= other.after
        above = other.upto is not None and self.after is not None and other.upto <= self.after
        return not (below or above)

    @property
    def ident(self) -> str:
        """A short name for the range, the same in every process (names its index objects)."""
        text = f"{self.after is not None}{self.after or ''}\x00{self.upto is not None}{self.upto or ''}"
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:24]

    def as_list(self) -> list[str | None]:
        return [self.after, self.upto]


def _between(bounds: Sequence[str]) -> list[KeyRange]:
    edges: list[str | None] = [None, *bounds, None]
    return [KeyRange(edges[i], edges[i + 1]) for i in range(len(bounds) + 1)]


def unit_target(total_keys: int) -> int:
    """Keys per unit for a bucket of ``total_keys``: about 256 units, 100 to 100,000 keys each."""
    return max(100, min(100_000, total_keys // 256))


def balanced_cuts(weights: Sequence[int], parts: int) -> list[int]:
    """``parts + 1`` cut positions into ``weights`` (0 first, ``len(weights)`` last) that split it
    into ``parts`` contiguous runs of about equal total weight (some empty if there are few)."""
    cumulative = [0]
    for weight in weights:
        cumulative.append(cumulative[-1] + max(weight, 0))
    total = cumulative[-1]
    if total == 0:  # nothing known: split by count
        return [len(weights) * k // parts for k in range(parts + 1)]
    cuts = [0]
    for k in range(1, parts):
        goal = total * k / parts
        at = bisect.bisect_left(cumulative, goal)
        if at > 0 and goal - cumulative[at - 1] < cumulative[at] - goal:
            at -= 1  # the nearer of the two cuts around the goal
        cuts.append(min(max(at, cuts[-1]), len(weights)))
    cuts.append(len(weights))
    return cuts


@dataclass(frozen=True)
class Plan:
    """The key space cut into units at ``bounds``, each unit with a weight.

    ``observed``: the weights are key counts from a sweep (else a discovery's 1 each).
    ``part_size``: entries per index part, so a later :func:`rebalance` can cut at part bounds.
    ``previous``: the bounds of the plan this one replaced, whose units' index is read for a
    unit that has none of its own yet (its first sweep after a rebalance).
    """

    bounds: tuple[str, ...]
    weights: tuple[int, ...]
    observed: bool = False
    part_size: int = 250  # small until a sweep has counted: a discovered unit may be a huge DAG
    generation: int = 0
    previous: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("plan bounds must be strictly increasing")
        if len(self.weights) != len(self.bounds) + 1 or any(w < 0 for w in self.weights):
            raise ValueError("a plan needs one weight >= 0 per unit")
        if self.part_size < 1:
            raise ValueError("a plan's part size must be >= 1")

    @property
    def units(self) -> list[KeyRange]:
        return _between(self.bounds)

    @property
    def previous_units(self) -> list[KeyRange]:
        return [] if self.previous is None else _between(self.previous)

    def shard_units(self, index: int, count: int) -> range:
        """The units shard ``index`` of ``count`` owns: contiguous, balanced by weight."""
        cuts = balanced_cuts(self.weights, count)
        return range(cuts[index], cuts[index + 1])

    def lister_groups(self, units: range, concurrency: int) -> list[range]:
        """The shard's units cut into at most ``concurrency`` contiguous runs, one listing each.

        With key counts for weights, each lister gets at least :data:`MIN_KEYS_PER_LISTER` keys:
        every listing costs a partial last page, which should stay small beside its full ones.
        Without (a first sweep after a discovery), one lister: nothing tells how to split evenly.
        """
        if not units:
            return []
        weights = self.weights[units.start : units.stop]
        listers = max(1, min(concurrency, len(units), sum(weights) // MIN_KEYS_PER_LISTER)) if self.observed else 1
        cuts = balanced_cuts(weights, listers)
        groups = [range(units.start + cuts[k], units.start + cuts[k + 1]) for k in range(listers)]
        return [group for group in groups if group]

    def to_dict(self) -> dict[str, Any]:
        return {
            "bounds": list(self.bounds),
            "weights": list(self.weights),
            "observed": self.observed,
            "part_size": self.part_size,
            "generation": self.generation,
            "previous": None if self.previous is None else list(self.previous),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        previous = data.get("previous")
        return cls(
            tuple(data["bounds"]),
            tuple(int(w) for w in data["weights"]),
            bool(data["observed"]),
            int(data["part_size"]),
            int(data["generation"]),
            None if previous is None else tuple(previous),
        )


def rebalance(pieces: Sequence[tuple[KeyRange, int]], previous: Plan) -> Plan:
    """A plan of units of about :func:`unit_target` keys, cut only at the bounds of ``pieces``.

    ``pieces`` tile the key space in order (the parts of the last sweep's index, each with the
    keys it held), so every new unit's index can still be read from the old parts.
    """
    total = sum(count for _, count in pieces)
    target = unit_target(total)
    bounds: list[str] = []
    weights: list[int] = []
    held = 0
    for piece, count in pieces:
        held += count
        if held >= target and piece.upto is not None:
            bounds.append(piece.upto)
            weights.append(held)
            held = 0
    weights.append(held)
    return Plan(tuple(bounds), tuple(weights), True, target, previous.generation + 1, previous.bounds)


def next_plan(plan: Plan, pieces: Sequence[tuple[KeyRange, int]], counts: Sequence[int]) -> Plan | None:
    """The plan the next run takes after a complete sweep under ``plan``, or None to keep it.

    ``pieces``: the parts of the sweep's index with their keys, in key order; ``counts``: the keys
    of each unit. Units are cut again (:func:`rebalance`) when they came from a discovery or one
    outgrew twice :func:`unit_target`; they keep their bounds but take the counts as weights when
    more than :data:`DRIFT` of the keys moved between them (units a deleted DAG left empty would
    otherwise weigh what they held, and the shards that own them idle every night).
    """
    total = sum(counts)
    if not plan.observed or max(counts, default=0) > 2 * unit_target(total):
        return rebalance(pieces, plan)
    moved = sum(abs(count - weight) for count, weight in zip(counts, plan.weights, strict=True))
    if moved <= DRIFT * max(total, sum(plan.weights)):
        return None
    return Plan(plan.bounds, tuple(counts), True, plan.part_size, plan.generation + 1, plan.bounds)
