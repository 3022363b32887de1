"""Property: for any interleaving of versions, re-markings, deletions and syncs, each partner's latest
version of every object is what the policy allows from the origin's latest version: that version as
released (shared or redacted), or a withdrawal if the partner held the object and may not have it now.

Runs the real path (the US node's store on SQLite, ``Store.delete_object``, ``release_all``) and
judges the expectation with the pure engine; one node serves every example (fresh ids per example).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.node.ops import OpenNode, open_node
from exchange.policy import current_policy, evaluate
from exchange.sharing.release import release_all
from exchange.stix import format_timestamp
from exchange.storage.store import Selection

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
MARKINGS = {
    "green": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    "amber": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    "red": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
}
_clock = itertools.count(1)

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("version"), st.integers(0, 1), st.sampled_from(sorted(MARKINGS))),
        st.tuples(st.just("delete-latest"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("delete-all"), st.integers(0, 1), st.just("")),
        st.tuples(st.just("sync"), st.just(0), st.just("")),
    ),
    min_size=1, max_size=12,
)


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[OpenNode]:
    opened = open_node("us", data_dir=tmp_path_factory.mktemp("lifecycle-property"))
    yield opened
    opened.close()


def _version(oid: str, marking: str) -> dict:
    stamp = format_timestamp(1_767_225_600_000_000 + next(_clock) * 1000)[:-4] + "Z"  # strictly later, ms steps
    return {
        "type": "indicator", "spec_version": "2.1", "id": oid, "created": "2026-01-01T00:00:00.000Z", "modified": stamp,
        "created_by_ref": US_ID, "name": f"{marking.upper()} name", "description": f"{marking.upper()} ONLY content",
        "pattern": f"[domain-name:value = '{marking}.example']", "pattern_type": "stix", "valid_from": "2026-01-01T00:00:00Z",
        "object_marking_refs": [MARKINGS[marking]],
    }


def _released_form(obj: dict, partner: str) -> dict | None:
    [d] = evaluate([obj], current_policy(), "us", partner, held={US_ID, *MARKINGS.values()})
    return d.shared


def _content(obj: dict) -> dict:
    return {k: v for k, v in obj.items() if k != "modified"}


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_each_partners_latest_is_what_the_policy_allows_from_the_origins_latest(node, ops):
    cfg = node.node.config
    own = cfg.own_collection.id
    ids = [f"indicator--{uuid.uuid4()}" for _ in range(2)]
    origin: dict[str, list[dict]] = {i: [] for i in ids}
    held: dict[tuple[str, str], bool] = {}
    for op, which, marking in [*ops, ("sync", 0, "")]:
        oid = ids[which]
        if op == "version":
            obj = _version(oid, marking)
            node.store.add_objects(own, [obj])
            origin[oid].append(obj)
        elif op == "delete-latest" and origin[oid]:
            node.store.delete_object(Selection(own, versions=(origin[oid].pop()["modified"],)), oid)
        elif op == "delete-all":
            node.store.delete_object(Selection(own, versions=("all",)), oid)
            origin[oid] = []
        elif op == "sync":
            release_all(node)
            for partner in cfg.partners:
                target = cfg.partner_collection(partner, "partner-read").id
                for i in ids:
                    held[(partner, i)] = held.get((partner, i), False) or any(_released_form(v, partner) for v in origin[i])
                    _check(node.store.latest(target, i), origin[i], partner, held[(partner, i)])


def _check(got: dict | None, versions: list[dict], partner: str, ever_held: bool) -> None:
    allowed = _released_form(versions[-1], partner) if versions else None
    if allowed is not None:
        assert got is not None and _content(got) == _content(allowed), (partner, got, allowed)
    elif ever_held:
        assert got is not None and got.get("revoked") is True, (partner, got)
        assert "description" not in got and "name" not in got
        # the marking is one the partner could already read: no more restrictive than what it held
        assert got["object_marking_refs"] in ([MARKINGS["green"]], [MARKINGS["amber"]] if partner == "rok" else None)
    else:
        assert got is None, (partner, got)
