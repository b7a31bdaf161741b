"""The object layout: escaping is injective and bounded, prefixes nest, paths parse back."""

from __future__ import annotations

import itertools
import unicodedata
from uuid import UUID

import pytest
from airflow.sdk.state import AssetScope, TaskScope

from objstore_backend.layout import (
    MAX_SEGMENT_BYTES,
    ScopeKind,
    decode_segment,
    encode_segment,
    object_path,
    parse,
    scope_prefix,
)

# Paths of Airflow's own scopes: run again on 3.4 (scripts/test.sh).
pytestmark = pytest.mark.airflow_bound

TRICKY = [
    "",
    ".",
    "..",
    "...",
    "a/b",
    "/",
    "%",
    "%2F",
    "%25",
    "~",
    "a~b",
    "ü",
    unicodedata.normalize("NFD", "ü"),
    "\x00",
    "\n",
    " ",
    "region=1",
    "A",
    "a",
    "-1",
    "x" * MAX_SEGMENT_BYTES,
    "x" * (MAX_SEGMENT_BYTES + 1),
    "é" * 500,
    "é" * 501,
    "\U0001f600",
]


@pytest.mark.parametrize("value", TRICKY, ids=repr)
def test_segments_are_ascii_bounded_and_leave_no_path_syntax(value: str) -> None:
    segment = encode_segment(value)
    assert segment.isascii() and "/" not in segment and segment not in ("", ".", "..")
    assert len(segment) <= MAX_SEGMENT_BYTES or "~" in segment
    assert len(segment) <= 255


def test_segments_are_injective_and_decode_back() -> None:
    encoded = {encode_segment(v): v for v in TRICKY}
    assert len(encoded) == len(set(TRICKY))  # no two ids share a segment
    for segment, value in encoded.items():
        if "~" in segment:  # hashed: recognisable, deterministic, but not reversible
            assert decode_segment(segment) == segment and encode_segment(value) == segment
        else:
            assert decode_segment(segment) == value


@pytest.mark.parametrize("foreign", ["%41", "a/b", "~", "%zz", "%C3"])
def test_non_canonical_segments_are_rejected(foreign: str) -> None:
    with pytest.raises(ValueError):
        decode_segment(foreign)


def test_prefixes_never_overlap_between_neighbours() -> None:
    prefixes = [
        scope_prefix(TaskScope("d", "r", task, index))
        for task, index in itertools.product(["t", "t2", "t.", "t%"], [-1, 1, 10, 11])
    ]
    for a, b in itertools.permutations(prefixes, 2):
        assert not b.startswith(a), (a, b)
    everything = scope_prefix(TaskScope("d", "r", "t", 1), all_map_indices=True)
    assert all(p.startswith(everything) == p.startswith("task/d/r/t/") for p in prefixes)
    assert not scope_prefix(TaskScope("d", "r", "t2")).startswith(everything)


def test_paths_parse_back_to_their_scope_and_key() -> None:
    cases = {
        object_path(TaskScope("my dag", "run/1", "t", 3), "k/ey"): (
            ScopeKind.TASK,
            ("my dag", "run/1", "t", "3"),
            "k/ey",
        ),
        object_path(AssetScope(asset_id=12), "w"): (ScopeKind.ASSET_ID, ("12",), "w"),
        object_path(AssetScope(name="a/b"), ".."): (ScopeKind.ASSET_NAME, ("a/b",), ".."),
        object_path(AssetScope(uri="s3://x/y"), ""): (ScopeKind.ASSET_URI, ("s3://x/y",), ""),
    }
    for path, (kind, ids, key) in cases.items():
        location = parse(path)
        assert location is not None and (location.kind, location.ids, location.key) == (kind, ids, key)
    assert parse(object_path(TaskScope("d", "r", "t"), "k")).dag_id == "d"


@pytest.mark.parametrize(
    "foreign",
    [
        "task/d/r/t/k",  # no map index
        "task/d/r/t/x/k",  # map index not an int
        "task/d/r/t/01/k",  # not canonical
        "task/d/r/t/1/k/extra/more",
        "asset/id/abc/k",
        "asset/other/x/k",
        "assets/name/x/k",
        "README.md",
        "task/d/r/nope/t/1/k",  # 7 parts without a region segment
        "task/d/r/t/1/%41",  # not canonical escaping
        "task/d/r/t/1/~tmp-abc",  # a local temp file
        "task/d/r/region=../t/1/k",  # a region that is no UUID
        "task/d/r/region=00000000-0000-0000-0000-000000000000/t/1/k",  # the zero region has no segment
        "task/d/r/region=6F9619FF-8B86-4011-B42D-00CF4FC964FF/t/1/k",  # not as written (lower case)
        "task/d/r/region=6f9619ff8b864011b42d00cf4fc964ff/t/1/k",  # not as written (hyphens)
        "task/d/r/region%3D6f9619ff-8b86-4011-b42d-00cf4fc964ff/t/1/k",  # an escaped task id, 7 parts
    ],
)
def test_foreign_paths_do_not_parse(foreign: str) -> None:
    assert parse(foreign) is None


def test_bad_id_types_are_refused() -> None:
    with pytest.raises(TypeError, match="must be str"):
        object_path(TaskScope(1, "r", "t"), "k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="map_index"):
        object_path(TaskScope("d", "r", "t", "1"), "k")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be str"):
        object_path(TaskScope("d", "r", "t"), None)  # type: ignore[arg-type]


REGION = UUID("6f9619ff-8b86-4011-b42d-00cf4fc964ff")
OTHER_REGION = UUID("0b7a1c52-3f0e-4b53-9d43-5c6a2f1e8d90")


@pytest.mark.airflow34
def test_a_region_has_its_own_prefix_and_the_zero_region_keeps_the_33_path() -> None:
    zero = TaskScope("d", "r", "t", 2)
    assert object_path(TaskScope("d", "r", "t", 2, UUID(int=0)), "k") == object_path(zero, "k") == "task/d/r/t/2/k"
    in_region = TaskScope("d", "r", "t", region_id=REGION, region_index=2)
    assert object_path(in_region, "k") == f"task/d/r/region={REGION}/t/2/k"
    location = parse(object_path(in_region, "k"))
    assert location is not None and location.ids == ("d", "r", f"region={REGION}", "t", "2")
    # a task named like a region segment stays a task of the zero region
    assert parse(object_path(TaskScope("d", "r", f"region={REGION}", 2), "k")).ids[2:] == (f"region={REGION}", "2")
    scopes = [
        zero,
        in_region,
        TaskScope("d", "r", "t", region_id=OTHER_REGION, region_index=2),
        TaskScope("d", "r", "t2", region_id=REGION, region_index=2),
        TaskScope("d", "r", f"region={REGION}", 2),
    ]
    for scope in scopes:  # clearing every index of one region's task reaches no other scope's key
        whole_task = scope_prefix(scope, all_map_indices=True)
        assert [other for other in scopes if object_path(other, "k").startswith(whole_task)] == [scope]


@pytest.mark.airflow34
@pytest.mark.parametrize("region", ["../../x", f"region={REGION}", str(REGION), REGION.int, ""], ids=repr)
def test_a_region_id_that_is_no_uuid_is_refused(region: object) -> None:
    scope = TaskScope("d", "r", "t", region_id=region, region_index=0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="region_id must be a UUID"):
        object_path(scope, "k")
    with pytest.raises(TypeError, match="region_id must be a UUID"):
        scope_prefix(scope, all_map_indices=True)
