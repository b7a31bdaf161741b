"""The GC's first plan: where to cut a bucket no sweep has counted yet, from a few listings.

Without an earlier run nothing says where the keys are, and cutting one unit per DAG leaves a
first run as unbalanced as the bucket (one DAG run holding half the keys: one shard scans half).
The discovery estimates the keys below each prefix of the layout (DAG, run, region, task, map
index) from two kinds of listing request:

- a *probe*: one listing page from a prefix's start. It counts every prefix it passes whole
  exactly (a page of a small DAG often counts the next few too); a full page that ends inside
  the prefix shows it holds at least that page;
- a *delimiter listing* of a prefix that a probe could not pass: it names the prefix's
  children, each then estimated at the mean of its siblings counted or estimated so far.

It refines whatever holds the most estimated keys: the middle of the largest run of siblings
not looked at yet, or the children of the largest prefix no page has passed, in about
:data:`ROUNDS` rounds of requests sent together. Siblings are alike in Airflow's layout (runs of
one DAG, indices of one mapped task), so a few samples place the cuts; the outlier is found
because the refining follows the weight.

The budget (:func:`discovery_budget`) keeps a first run within the listing bound of every run:
all shards together list the bucket about once, plus at most 3 requests per shard.
Azure's listing cannot start at a key (its marker is opaque), so there are no probes there: its
first plan has a unit per DAG (or asset kind), weighted alike.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from objstore_backend.layout import RESERVED_PREFIX
from objstore_backend.partition import Plan, unit_target

__all__ = ["discover", "discovery_budget"]

#: A page of the stores' listings (S3 and GCS answer at most 1,000 keys a request).
PAGE = 1000
#: Sorts after every key under a prefix and before the prefix's next sibling (keys are UTF-8).
PAST = "\U0010ffff"


#: Rounds of requests a discovery takes at most: each round chooses its requests by a walk of
#: every prefix named so far, so a large budget is spent a few requests at a time, together.
ROUNDS = 32


def discovery_budget(shards: int, estimated_keys: float = 0.0) -> int:
    """Listing requests a first plan may take: one, two per shard, and one per 5,000 keys the
    discovery estimates the bucket holds (a bucket of many large DAGs needs a request or two per
    DAG to find the large one), those at most 256.

    The shards of a run list the bucket once between them, plus a partial last page each, and
    one listing drops old run records: with this budget a first run stays within 1.2 listings
    plus 3 requests per shard. The cap keeps the discovery's memory (a prefix for each name its
    listings return) and its time small beside the sweep's at any size."""
    return 1 + 2 * max(shards, 1) + min(int(estimated_keys // (5 * PAGE)), 256)


@dataclass
class _Node:
    """A prefix (relative to the base, ending in ``/``), or the rest of a listing cut short."""

    start: str  # every key of the node sorts after this
    end: str  # ... and at or before this
    listable: bool = True  # a prefix whose children a delimiter listing can name
    children: list[_Node] | None = None
    prior: float = 0.0  # the keys it was estimated to hold when listed before any page reached it


#: A request the discovery may make: ``(action, node, keys node is estimated to hold)``.
_Step = tuple[str, _Node, float]


def _lower_median(values: list[float]) -> float | None:
    """The siblings' typical size, not pulled up by the one huge sibling a skewed bucket has."""
    return sorted(values)[(len(values) - 1) // 2] if values else None


@dataclass
class _Survey:
    """What the requests so far revealed: the pages' keys and the prefixes named."""

    root: _Node
    keys: list[str] = field(default_factory=list)  # every key a page showed, sorted
    listed: list[tuple[str, str]] = field(default_factory=list)  # (after, through], disjoint, sorted
    #: (first key, last key), sorted: each is the next page of keys, so by its last key too
    full_pages: list[tuple[str, str]] = field(default_factory=list)
    _estimates: dict[int, float] = field(default_factory=dict)  # by node id, until the next answer
    _typical_at: dict[int, float | None] = field(default_factory=dict)  # by depth, until the next answer
    _typical_of: dict[int, tuple[float | None, float]] = field(default_factory=dict)  # by node id, likewise

    def learnt(self) -> None:
        """A listing named a prefix's children: estimates are worked out again."""
        self._forget()

    def _forget(self) -> None:
        self._estimates.clear()
        self._typical_at.clear()
        self._typical_of.clear()

    def add_page(self, after: str, page: list[str]) -> None:
        """A probe's answer: its keys, the stretch it listed, and the prefix it lay wholly inside."""
        # a page from a key a page showed may hold one key fewer and still not be the last: GCS's
        # startOffset includes that key, and the transport drops it
        at = bisect.bisect_left(self.keys, after)
        full = len(page) >= (PAGE - 1 if at < len(self.keys) and self.keys[at] == after else PAGE)
        self.keys = sorted(set(self.keys).union(page))
        through = page[-1] if full else PAST
        merged: list[tuple[str, str]] = []
        for span in sorted([*self.listed, (after, through)]):
            if merged and span[0] <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], span[1]))
            else:
                merged.append(span)
        self.listed = merged
        if full:
            bisect.insort(self.full_pages, (page[0], page[-1]))
        self._forget()

    def crowded(self, node: _Node) -> bool:
        """A whole page lay inside this prefix: only its children can tell how large it is."""
        after = bisect.bisect_right(self.full_pages, (node.start, PAST + PAST))  # the first page past its start
        return node.listable and after < len(self.full_pages) and self.full_pages[after][1] <= node.end

    def _span(self, key: str) -> tuple[str, str] | None:
        at = bisect.bisect_left(self.listed, (key, PAST + PAST)) - 1
        return self.listed[at] if at >= 0 and self.listed[at][0] <= key else None

    def covered(self, node: _Node) -> bool:
        span = self._span(node.start)
        return span is not None and node.end <= span[1]

    def reached(self, node: _Node) -> bool:
        """A page went into ``node`` (and, if not covered, stopped inside it)."""
        span = self._span(node.start)
        return span is not None and node.start < span[1]

    def shown(self, node: _Node) -> list[str]:
        return self.keys[bisect.bisect_right(self.keys, node.start) : bisect.bisect_right(self.keys, node.end)]

    def known(self, node: _Node) -> bool:
        """Sized by what was listed (its keys, or its children), not by its siblings."""
        return node.children is not None or self.crowded(node) or self.covered(node)

    def estimate(self, node: _Node, typical: float = float(PAGE)) -> float:
        """The keys ``node`` is estimated to hold; ``typical``: its siblings' typical size."""
        if not self.known(node):  # the rest of a long listing: as many again as were named
            many = typical * PAGE if not node.listable else typical
            return max(many, float(len(self.shown(node))))
        if id(node) not in self._estimates:
            self._estimates[id(node)] = self._estimate(node)
        return self._estimates[id(node)]

    def _estimate(self, node: _Node) -> float:
        if self.covered(node):
            return float(len(self.shown(node)))
        if not node.children:  # a page stopped inside it: at least what it showed, likely more
            return 2.0 * max(len(self.shown(node)), 1)
        typical = self.typical(node)
        return sum(self.estimate(child, typical) for child in node.children)

    def typical(self, node: _Node) -> float:
        """What a child of ``node`` that no listing has sized is estimated to hold: like its sized
        siblings, else like the sized prefixes of its depth elsewhere (the runs of other DAGs),
        else a page."""
        seen = self._seen_typical(node)[0]
        return float(PAGE) if seen is None else seen

    def _seen_typical(self, node: _Node) -> tuple[float | None, float]:
        if id(node) not in self._typical_of:
            self._typical_of[id(node)] = self._work_out_typical(node)
        return self._typical_of[id(node)]

    def _work_out_typical(self, node: _Node) -> tuple[float | None, float]:
        """The typical child of ``node`` and how much a look at one is worth per key: twice as
        much if it was sized only as a share of what its parent was estimated to hold (one
        DAG run holding half the keys is the one child of its DAG), half as much if like cousins
        elsewhere (the runs of other DAGs, alike in Airflow's layout), once if like its siblings."""
        sized = _lower_median([self.estimate(child) for child in node.children or [] if self.known(child)])
        if sized is not None:
            return sized, 1.0
        share = node.prior / len(node.children) if node.prior and node.children else 0.0
        cousins = self._cousins(node.start.count("/") + 1)
        if cousins is None:
            return (share, 2.0) if share else (None, 1.0)
        return (share, 2.0) if share > cousins else (cousins, 0.5)

    def _cousins(self, depth: int) -> float | None:
        if depth not in self._typical_at:
            self._typical_at[depth] = _lower_median([self.estimate(n) for n in self._sized_at(self.root, depth)])
        return self._typical_at[depth]

    def _sized_at(self, node: _Node, depth: int) -> Iterator[_Node]:
        for child in node.children or []:
            if child.start.count("/") == depth:
                if self.known(child):
                    yield child
            elif child.children:
                yield from self._sized_at(child, depth)

    def next_requests(self, least: float, most: int) -> list[_Step]:
        """The ``most`` most useful requests, ``(action, node, keys node is estimated to hold)``,
        on distinct nodes: listings of prefixes a page lay inside first, then whatever holds the
        most estimated keys (if more than ``least``). Actions: ``"probe"`` a page from the node's
        start (or past the keys shown in it), ``"list"`` its children, ``"more"`` the children
        after those a listing named."""
        candidates = [c for c in self._candidates(self.root, self.estimate(self.root)) if c[0] > least]
        chosen: dict[int, _Step] = {}
        for _, action, node, keys in sorted(candidates, key=lambda candidate: -candidate[0]):
            if len(chosen) < most:
                chosen.setdefault(id(node), (action, node, keys))
        return list(chosen.values())

    def _candidates(self, node: _Node, weight: float) -> Iterator[tuple[float, str, _Node, float]]:
        if self.covered(node):
            return
        if node.children is None and node.listable and self.reached(node):
            yield (float("inf") if self.crowded(node) else weight), "list", node, weight
            return
        if not node.children:  # not reached yet, or keys only
            yield weight, "probe", node, weight
            return
        seen, worth = self._seen_typical(node)
        typical = float(PAGE) if seen is None else seen
        # siblings nobody looked at as large as a page: a page would lie inside the one looked
        # at, so its children are named straight away (unless sized only as a share, see above)
        name_them = seen is not None and seen >= PAGE and worth <= 1
        unsampled: list[_Node] = []
        for child in [*node.children, None]:
            if child is not None and not child.listable and not self.covered(child):
                # the rest of a long listing, first: nothing in it can be cut before it is named
                yield float("inf"), "more", node, weight
                continue
            if child is not None and not self.known(child) and not self.reached(child):
                unsampled.append(child)
                continue
            if unsampled:  # siblings nobody looked at: the middle one
                action = "list" if name_them and unsampled[0].listable else "probe"
                yield worth * typical * len(unsampled), action, unsampled[len(unsampled) // 2], typical
                unsampled = []
            if child is not None:
                yield from self._candidates(child, self.estimate(child, typical))

    def probe_start(self, node: _Node) -> str:
        """Where a probe of ``node`` starts: its start, or past the last key a page showed in it."""
        shown = self.shown(node)
        return shown[-1] if shown else node.start

    def pieces(self, node: _Node, weight: float) -> Iterator[tuple[str, float]]:
        """``(cut, keys)`` in key order: a unit may end at ``cut`` (keys <= it) after ``keys``."""
        if self.covered(node) or not node.children:
            shown = self.shown(node)
            yield from ((key, 1.0) for key in shown)
            if not self.covered(node):
                yield node.end, max(weight - len(shown), 0.0)
            return
        typical = self.typical(node)
        at = node.start
        for child in node.children:  # keys right in the node (not in a child) count one each
            between = self.keys[bisect.bisect_right(self.keys, at) : bisect.bisect_right(self.keys, child.start)]
            yield from ((key, 1.0) for key in between)
            yield from self.pieces(child, self.estimate(child, typical))
            at = child.end
        rest = self.keys[bisect.bisect_right(self.keys, at) : bisect.bisect_right(self.keys, node.end)]
        yield from ((key, 1.0) for key in rest)


async def _ask(transport: Any, fs: Any, base: str, step: _Step, probe_start: str) -> tuple[list[str], int]:
    """One step's answer: a probe's page from ``probe_start`` (keys relative to ``base``), or a
    listing's prefixes (full paths), and the listing requests it took."""
    action, node, _ = step
    if action == "probe":
        return await _page(transport, fs, base, probe_start), 1
    after = None
    if action == "more":
        assert node.children
        after = base + node.children[-1].start
    found: list[str]
    found, requests = await transport.list_prefixes(fs, base + node.start, max_pages=1, start_after=after)
    return found, requests


async def _page(transport: Any, fs: Any, base: str, after: str) -> list[str]:
    """The first listing page after ``after`` (one request), keys relative to ``base``."""
    pages = transport.list_pages(fs, base, base + after if after else None)
    try:
        page = await anext(pages, None)
    finally:
        await pages.aclose()
    return [] if page is None else [entry.path[len(base) :] for entry in page]


def _children(base: str, parent: _Node, found: list[str], complete: bool) -> list[_Node]:
    names = sorted(path[len(base) :] for path in found)
    nodes = [_Node(name, name + PAST) for name in names if not name.startswith(RESERVED_PREFIX)]
    if not complete and nodes:  # more children than one listing names: the rest as one node
        nodes.append(_Node(nodes[-1].end, parent.end, listable=False))
    return nodes


async def discover(transport: Any, fs: Any, base: str, shards: int = 1) -> tuple[Plan, int]:
    """A first plan for ``shards`` shards from at most :func:`discovery_budget` listing requests.

    ``base`` is the store's full base path (ending in ``/``); returns the plan and the requests.
    """
    budget = discovery_budget(shards)
    survey = _Survey(_Node("", PAST))
    found, requests = await transport.list_prefixes(fs, base, max_pages=1)
    survey.root.children = _children(base, survey.root, found, len(found) < PAGE)
    for top in survey.root.children:  # the DAGs and the asset kinds, named before anything else
        if top.start in ("task/", "asset/") and requests < budget:
            pages = budget - requests
            found, more = await transport.list_prefixes(fs, base + top.start, max_pages=pages)
            requests += more
            top.children = _children(base, top, found, more < pages or len(found) < PAGE * pages)
    # one shard needs no cuts: its units only size the index parts until its sweep counts them
    probes = shards > 1 and not type(transport).__name__.startswith("Azure")
    while probes and (allowed := discovery_budget(shards, survey.estimate(survey.root))) > requests:
        least = survey.estimate(survey.root) / (32 * max(shards, 1))
        steps = survey.next_requests(least, min(allowed - requests, max(1, allowed // ROUNDS)))
        if not steps:
            break
        starts = [survey.probe_start(node) for _, node, _ in steps]  # before any answer is added
        asking = (_ask(transport, fs, base, step, at) for step, at in zip(steps, starts, strict=True))
        answers = await asyncio.gather(*asking)
        for (action, node, keys), at, (found, more) in zip(steps, starts, answers, strict=True):
            requests += more
            if action == "probe":
                survey.add_page(at, found)
            elif action == "list":
                if not survey.reached(node):
                    node.prior = keys
                node.children = _children(base, node, found, len(found) < PAGE)
            else:  # "more": the listing of ``node``'s children goes on after the ones named
                assert node.children
                node.children[-1:] = _children(base, node.children[-1], found, len(found) < PAGE)
        survey.learnt()
    return _cut(list(survey.pieces(survey.root, survey.estimate(survey.root))), shards), requests


def _cut(pieces: list[tuple[str, float]], shards: int) -> Plan:
    """Units of about ``total / (8 * shards)`` estimated keys (at most :func:`unit_target`),
    cut only where a piece ends; their estimated keys are the weights."""
    total = sum(keys for _, keys in pieces)
    target = max(1.0, min(float(unit_target(int(total))), total / (8 * max(shards, 1))))
    bounds: list[str] = []
    weights: list[int] = []
    held = 0.0
    for cut, keys in pieces[:-1]:
        held += keys
        if held >= target and (not bounds or cut > bounds[-1]) and cut != PAST:
            bounds.append(cut)
            weights.append(max(1, round(held)))
            held = 0.0
    weights.append(max(1, round(held + (pieces[-1][1] if pieces else 0.0))))
    return Plan(tuple(bounds), tuple(weights))
