"""``exchange.stix.ref_properties``: the reference-holding properties of an object, remembered per shape.

The engine's reference walk and the release's list of referenced ids read an object's references
through it; they must find exactly what a look at every property name finds, whatever the names,
their order and their values."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.policy.engine import _refs_of
from exchange.sharing.release import _referenced
from exchange.stix import _MEMO_MAX, _SHAPES, ref_properties

NAMES = st.sampled_from([
    "type", "id", "name", "created_by_ref", "object_marking_refs", "object_refs", "sighting_of_ref", "where_sighted_refs",
    "granular_markings", "extensions", "labels", "x_ref", "x_refs", "description", "_ref", "external_references",
])
REF_VALUES = st.sampled_from(["identity--371ec1f1-c078-4fd3-9eff-c233c753c388", "marking-definition--x", "no-dashes", ""])
VALUES = st.one_of(
    REF_VALUES, st.integers(), st.none(), st.lists(st.one_of(REF_VALUES, st.integers()), max_size=3),
    st.lists(st.fixed_dictionaries({"marking_ref": st.one_of(REF_VALUES, st.integers())}), max_size=2),
    st.dictionaries(st.sampled_from(["extension-definition--1", "property-extension", "ext"]), st.just({}), max_size=2),
)
OBJECTS = st.dictionaries(NAMES, VALUES, max_size=10)


def _refs_of_every_name(obj: dict) -> list[tuple[str, str]]:
    """The engine's walk as it was before shapes were remembered: every property name looked at."""
    out: list[tuple[str, str]] = []
    for key, value in obj.items():
        if key.endswith("_ref"):
            if isinstance(value, str) and "--" in value:
                out.append((key, value))
        elif key.endswith("_refs"):
            if isinstance(value, list):
                out.extend((key, v) for v in value if isinstance(v, str) and "--" in v)
        elif key == "granular_markings" and isinstance(value, list):
            out.extend(("granular_markings", gm["marking_ref"]) for gm in value
                       if isinstance(gm, dict) and isinstance(gm.get("marking_ref"), str))
        elif key == "extensions" and isinstance(value, dict):
            out.extend(("extensions", k) for k in value if k.startswith("extension-definition--"))
    return out


def _referenced_every_name(obj: dict) -> set[str]:
    refs: set[str] = set()
    for key, value in obj.items():
        if key.endswith("_ref") and isinstance(value, str):
            refs.add(value)
        elif key.endswith("_refs") and isinstance(value, list):
            refs.update(v for v in value if isinstance(v, str))
    for gm in obj.get("granular_markings", ()) or ():
        if isinstance(gm, dict) and isinstance(gm.get("marking_ref"), str):
            refs.add(gm["marking_ref"])
    return refs


@settings(max_examples=400, deadline=None)
@given(OBJECTS)
def test_an_object_s_references_are_found_as_by_looking_at_every_name(obj):
    assert _refs_of(obj) == _refs_of_every_name(obj)
    assert _refs_of(dict(obj)) == _refs_of_every_name(obj)  # a second object of the same shape: from the memo
    if not isinstance(obj.get("granular_markings"), (list, type(None))) and obj.get("granular_markings"):
        return  # the old walk iterated any value there; a non-list holds no marking_ref dict either way
    assert _referenced(obj) == _referenced_every_name(obj)


def test_the_memo_of_shapes_is_bounded():
    for i in range(_MEMO_MAX + 10):
        ref_properties({f"p{i}_ref": "identity--x", "type": "indicator"})
    assert len(_SHAPES) <= _MEMO_MAX
    assert ref_properties({"type": "x", "created_by_ref": "identity--y", "q_refs": []}) == (("created_by_ref", 1), ("q_refs", 2))
