"""Key ranges: how the GC's shards and listers split the key space without talking to each other.

A :class:`KeyRange` holds the keys ``k`` (relative to the base) with ``after < k <= upto``; so
S3's ``StartAfter`` starts a range exactly where the previous one ends. A :class:`Plan` cuts the
whole key space into *units* at its bounds; every key, foreign ones included, falls in exactly
one unit. Shard ``I/N`` owns a contiguous run of units, balanced by their weights (the keys the
last sweep saw in each, or a discovery's estimates), and its listers each list a contiguous run
of the shard's units in one listing, so N shards together list the bucket about once.

A first plan comes from a discovery (delimiter listings and a few probe pages, which cut a large
DAG, run or task too: :func:`discover`); later plans from what a sweep observed
(:func:`rebalance`), which cuts units of about :func:`unit_target` counted keys. Every shard
computes the same ranges from the same plan: the plan only changes after a complete sweep
(see :mod:`objstore_backend.gc_index`).
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from objstore_backend.layout import RESERVED_PREFIX

__all__ = ["KeyRange", "Plan", "balanced_cuts", "discover", "rebalance", "unit_target"]

#: A discovery makes at most this many units (evenly chosen among the DAG prefixes).
MAX_DISCOVERED_UNITS = 256
#: A lister gets at least this many keys (ten listing pages) when the weights are key counts.
MIN_KEYS_PER_LISTER = 10_000


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


#: One listing page of the stores' listings (S3 and GCS answer at most 1,000 keys a request).
PAGE = 1000
#: Sorts after every key under a prefix and before the prefix's next sibling (keys are UTF-8).
PAST = "\U0010ffff"


def discovery_budget(shards: int) -> int:
    """Listing requests a first plan may make: two delimiter listings and two per shard. The first
    run's shards list the bucket once plus at most a partial page each; this keeps the total within
    one listing + 3 per shard."""
    return 2 + 2 * shards if shards > 1 else 2


def _node(first: str, last: str) -> str | None:
    """The deepest prefix (ending in ``/``, a DAG's or an asset's or below) holding both keys."""
    same = 0
    while same < min(len(first), len(last)) and first[same] == last[same]:
        same += 1
    node = first[: first.rfind("/", 0, same) + 1]
    return node if node.count("/") >= 2 else None


def _child(node: str, key: str) -> str:
    """The child of ``node`` that holds ``key``: a prefix, or the key itself."""
    rest = key[len(node) :]
    return node + rest[: rest.index("/") + 1] if "/" in rest else key


def _covered(pages: Sequence[tuple[str, str | None]], start: str, end: str) -> bool:
    """True if one of the pages (``(after, last key or None for the end)``) listed all of ``start..end``."""
    return any(after <= start and (last is None or last >= end) for after, last in pages)


def _spread(count: int) -> list[int]:
    """``range(count)`` in an order that covers it evenly early: both ends, then midpoints."""
    order = [0, count - 1][: max(count, 0)]
    spans = [(0, count - 1)]
    while spans:
        low, high = spans.pop(0)
        if high - low > 1:
            middle = (low + high) // 2
            order.append(middle)
            spans += [(low, middle), (middle, high)]
    return list(dict.fromkeys(order))


async def _page(transport: Any, fs: Any, base: str, after: str) -> list[str]:
    """The first listing page after ``after`` (one request), keys relative to ``base``."""
    pages = transport.list_pages(fs, base, base + after if after else None)
    try:
        page = await anext(pages, None)
    finally:
        await pages.aclose()
    return [] if page is None else [entry.path[len(base) :] for entry in page]


async def discover(transport: Any, fs: Any, base: str, shards: int = 1) -> tuple[Plan, int]:
    """A first plan, from what :func:`discovery_budget` listing requests reveal.

    ``base`` is the store's full base path (ending in ``/``); returns the plan and the requests.
    Delimiter listings of the top level and of ``task/`` name the DAGs (and asset kinds). Then
    probes: one listing page from the start of a DAG not counted yet, the DAGs taken in an order
    that spreads them over the key space (first, last, middle...). The keys a page shows are
    counted exactly, and a DAG the page passed whole is done. A page that lies within one prefix
    (a DAG, a run, a task, a map index) shows a large one: one delimiter listing names its
    children, each estimated at the mean of the children counted whole, and the probes go on past
    the child the page ended in. Where the budget ends, a DAG not counted is estimated at the mean
    of the DAGs counted whole. A bucket of a few pages is counted exactly. Azure's listing cannot
    start at a key: there the plan has one unit per DAG, as before.
    """
    budget = discovery_budget(shards)
    top, requests = await transport.list_prefixes(fs, base, max_pages=1)
    found = [path[len(base) :] for path in top]
    if "task/" in found:
        dags, more = await transport.list_prefixes(fs, base + "task/", max_pages=2)
        found = [b for b in found if b != "task/"] + [path[len(base) :] for path in dags]
        requests += more
    prefixes = sorted(b for b in found if not b.startswith(RESERVED_PREFIX)) or [""]
    # Azure's listing cannot start at a key (it lists from the prefix's start): no probes there
    probes = not type(transport).__name__.startswith("Azure")
    seen: set[str] = set()  # the keys the probes counted
    estimates: list[tuple[str, str, float]] = []  # (point, end, keys estimated between them)
    covered: list[tuple[str, str | None]] = []  # what each page listed: (after, last key or None)
    done: set[str] = set()  # prefixes counted whole, or estimated from their children
    whole: dict[str, int] = {}
    skipped: dict[str, list[str]] = {}  # per prefix: the ends of the large prefixes skipped in it
    order = [prefixes[i] for i in _spread(len(prefixes))]
    while probes and requests < budget:
        targets = [p for p in order if p not in done]
        if not targets:
            break
        target = targets[0]
        after = max([target, *(k for k in seen if k.startswith(target)), *skipped.get(target, [])])
        page = await _page(transport, fs, base, after)
        requests += 1
        seen.update(page)
        covered.append((after, page[-1] if len(page) == PAGE else None))
        for prefix in prefixes:  # the prefixes this page went past the end of (or reached the end in)
            if prefix not in done and prefix >= target and (len(page) < PAGE or page[-1] > prefix + PAST):
                done.add(prefix)
                whole[prefix] = sum(1 for key in seen if key.startswith(prefix))
        node = _node(page[0], page[-1]) if len(page) == PAGE else None
        if node is None or requests >= budget:
            continue
        children, more = await transport.list_prefixes(fs, base + node, max_pages=1)
        requests += more
        names = [path[len(base) :] for path in children]
        ending = _child(node, page[-1])  # the child the page ended in: the walk goes on past it
        end = ending + PAST if ending != page[-1] else page[-1]
        sizes: dict[str, int] = {}
        for key in seen:
            if key.startswith(node):
                sizes[_child(node, key)] = sizes.get(_child(node, key), 0) + 1
        complete = [n for c, n in sizes.items() if c != ending and _covered(covered, c, c + PAST)]
        per_child = sum(complete) / len(complete) if complete else len(page) / len(sizes)
        # until a later page counts them: the rest of that child, and each child not reached
        rest = max(per_child - sizes[ending], per_child / 2) if names else float(len(page))
        estimates.append((page[-1], end, rest))
        estimates += [(name, name + PAST, per_child) for name in names if name > end]
        owner = next((p for p in reversed(prefixes) if node.startswith(p)), "")
        skipped.setdefault(owner, []).append(end)
    counted = [count for prefix, count in whole.items() if count and prefix not in skipped]
    mean = sum(counted) / len(counted) if counted else float(PAGE)
    for prefix in prefixes:
        if prefix not in done and prefix:
            inside = [key for key in seen if key.startswith(prefix)] + skipped.get(prefix, [])
            last = max(inside, default=prefix)
            estimates.append((last, prefix + PAST, mean / 2 if inside else mean))
    guesses = [(point, keys) for point, end, keys in estimates if not _covered(covered, point, end)]
    survey: list[tuple[str | None, float]] = []
    pending = 0.0  # estimated keys after the last point, up to the next one
    for point, keys, is_key in sorted([(key, 1.0, True) for key in seen] + [(p, k, False) for p, k in guesses]):
        survey.append((point, pending + (keys if is_key else 0.0)))
        pending = 0.0 if is_key else keys
    survey.append((None, pending))
    return _cut(survey, shards), requests


def _cut(survey: Sequence[tuple[str | None, float]], shards: int) -> Plan:
    """Units of about ``total / (8 * shards)`` estimated keys (at most :func:`unit_target`), cut
    only where the survey may cut; their estimated keys are the weights."""
    total = sum(keys for _, keys in survey)
    target = max(1.0, min(float(unit_target(int(total))), total / (8 * max(shards, 1))))
    bounds: list[str] = []
    weights: list[int] = []
    held = 0.0
    for upto, keys in survey:
        held += keys
        if upto is not None and held >= target:
            bounds.append(upto)
            weights.append(max(1, round(held)))
            held = 0.0
    weights.append(max(1, round(held)))
    return Plan(tuple(bounds), tuple(weights))


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
