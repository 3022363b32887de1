"""Marking tables: official TLP 2.0 / IEP 2.0 objects, TLP 1.0 -> 2.0, IEP parsing, most restrictive wins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import stix2
from stix2.v21 import common as stix2_common

from exchange.policy import markings as mk

DATA = Path(mk.__file__).resolve().parent.parent / "data"

# The official objects as published in oasis-open/cti-stix-common-objects (verbatim text):
# objects/marking-definition/*.json and extension-definition-specifications/tlp-2.0/examples/tlp-{clear,amber}.json,
# objects/extension-definition/extension-definition--60a3c5c5-...json (commit fff95284),
# extension-definition-specifications/iep-marking-definition-762/examples/iep-extension-definition-object.json.
OFFICIAL_TEXT = {
    "clear": (
        '{ "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487", '
        '"created": "2022-10-01T00:00:00.000Z", "name": "TLP:CLEAR", '
        '"extensions": { "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": { "extension_type": "property-extension", '
        '"tlp_2_0" : "clear" } } }'
    ),
    "green": (
        '{ "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb", '
        '"created": "2022-10-01T00:00:00.000Z", "name": "TLP:GREEN", '
        '"extensions": { "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": { "extension_type": "property-extension", '
        '"tlp_2_0" : "green" } } }'
    ),
    "amber": (
        '{ "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421", '
        '"created": "2022-10-01T00:00:00.000Z", "name": "TLP:AMBER", '
        '"extensions": { "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": { "extension_type": "property-extension", '
        '"tlp_2_0" : "amber" } } }'
    ),
    "amber+strict": (
        '{ "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003", '
        '"created": "2022-10-01T00:00:00.000Z", "name": "TLP:AMBER+STRICT", '
        '"extensions": { "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": { "extension_type": "property-extension", '
        '"tlp_2_0" : "amber+strict" } } }'
    ),
    "red": (
        '{ "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1", '
        '"created": "2022-10-01T00:00:00.000Z", "name": "TLP:RED", '
        '"extensions": { "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d": { "extension_type": "property-extension", '
        '"tlp_2_0" : "red" } } }'
    ),
    "tlp-ext": (
        '{ "id": "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d", "type": "extension-definition", "spec_version": "2.1", '
        '"name": "TLP 2.0", "description": "This defines TLP 2.0 as a STIX extension", "created": "2022-10-01T00:00:00.000Z", '
        '"modified": "2022-10-01T00:00:00.000Z", "created_by_ref": "identity--b3bca3c2-1f3d-4b54-b44f-dac42c3a8f01", '
        '"schema": '
        '"https://github.com/oasis-open/cti-stix-common-objects/tree/master/extension-definition-specifications/tlp-2.0", '
        '"version": "1.0.0", "extension_types": [ "property-extension" ] }'
    ),
    "iep-ext": (
        '{ "id": "extension-definition--762e2e97-ee51-43e5-a9ea-165fbb862c4a", "type": "extension-definition", "spec_version": "2.1", '
        '"name": "IEP 2.0", "description": "This defines IEP 2.0 as a STIX extension", "created": "2022-12-19T00:00:00.000Z", '
        '"modified": "2022-12-19T00:00:00.000Z", "created_by_ref": "identity--b3bca3c2-1f3d-4b54-b44f-dac42c3a8f01", '
        '"schema": '
        '"https://github.com/oasis-open/cti-stix-common-objects/tree/master/extension-definition-specifications/iep-marking-definition-762", '
        '"version": "1.0.0", "extension_types": [ "property-extension" ] }'
    ),
}
IEP_EXAMPLE = {  # official example iep-data-marking-example.json
    "type": "marking-definition", "spec_version": "2.1", "id": "marking-definition--da05d443-ad8d-46fc-abf5-31d3d00290f1",
    "created": "2024-01-10T14:52:41.853121Z", "name": "IEP data marking",
    "extensions": {"extension-definition--762e2e97-ee51-43e5-a9ea-165fbb862c4a": {
        "extension_type": "property-extension", "encrypt_in_transit": "may",
        "permitted_actions": "externally-visible-direct-actions", "affected_party_notifications": "may",
        "tlp": "amber", "provider_attribution": "must-not", "unmodified_resale": "must-not",
        "iep_id": "0224bfdf-ea3a-49c3-96f6-66d908bb1845", "iep_version": 2.0,
        "description": "This is a TLP-AMBER Information Exchange Policy", "start_date": "2022-10-01T00:00:00Z"}},
}


def _canon(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


@pytest.mark.parametrize("key", list(OFFICIAL_TEXT))
def test_official_objects_are_identical_in_table_data_file_and_oasis_text(key):
    official = json.loads(OFFICIAL_TEXT[key])
    table = mk.OFFICIAL_OBJECTS[official["id"]]
    shipped = json.loads((DATA / f"{official['id']}.json").read_text(encoding="utf-8"))
    # same properties, same values, same key order: identical serialisation
    assert _canon(table) == _canon(official) == _canon(shipped)


def test_data_dir_ships_exactly_the_seven_official_objects_and_the_signature_extension():
    names = sorted(p.stem for p in DATA.glob("*.json"))
    assert names == sorted([*mk.TLP2_IDS.values(), mk.TLP2_EXTENSION_ID, mk.IEP2_EXTENSION_ID, mk.SIGNATURE_EXTENSION_ID])
    shipped = json.loads((DATA / f"{mk.SIGNATURE_EXTENSION_ID}.json").read_text(encoding="utf-8"))
    assert _canon(shipped) == _canon(mk.SIGNATURE_EXTENSION_DEFINITION)


def test_official_tlp2_markings_parse_with_stix2_without_custom_content():
    for obj in mk.TLP2_MARKINGS.values():
        parsed = stix2.parse(obj, allow_custom=False, version="2.1")
        assert parsed.id == obj["id"]


def test_tlp1_constants_map_onto_tlp2():
    assert mk.TLP1_TO_TLP2[stix2_common.TLP_WHITE.id] == mk.TLP2_IDS[mk.CLEAR]
    assert mk.TLP1_TO_TLP2[stix2_common.TLP_GREEN.id] == mk.TLP2_IDS[mk.GREEN]
    assert mk.TLP1_TO_TLP2[stix2_common.TLP_AMBER.id] == mk.TLP2_IDS[mk.AMBER]
    assert mk.TLP1_TO_TLP2[stix2_common.TLP_RED.id] == mk.TLP2_IDS[mk.RED]
    for const in (stix2_common.TLP_WHITE, stix2_common.TLP_GREEN, stix2_common.TLP_AMBER, stix2_common.TLP_RED):
        assert mk.TLP1_MARKINGS[const.id] == json.loads(const.serialize())


def test_tlp1_and_tlp2_green_are_different_ids_with_the_same_level():
    assert stix2_common.TLP_GREEN.id != mk.TLP2_IDS[mk.GREEN]
    assert mk.LEVEL_OF[stix2_common.TLP_GREEN.id] == mk.LEVEL_OF[mk.TLP2_IDS[mk.GREEN]] == mk.GREEN


def test_levels_order_from_clear_to_red():
    assert [mk.parse_level(n) for n in ("TLP:CLEAR", "green", "AMBER", "amber+strict", "red")] == [0, 1, 2, 3, 4]
    assert mk.parse_level("white") == mk.CLEAR
    with pytest.raises(ValueError):
        mk.parse_level("purple")


def test_most_restrictive_marking_wins():
    assert mk.most_restrictive([mk.GREEN, mk.RED, mk.AMBER]) == mk.RED
    assert mk.most_restrictive([None, mk.CLEAR]) == mk.CLEAR
    assert mk.most_restrictive([]) is None


def test_iep_official_example_parses():
    iep = mk.parse_iep(IEP_EXAMPLE)
    assert iep is not None
    assert iep.tlp == mk.AMBER
    assert iep.provider_attribution == "must-not"
    assert iep.unmodified_resale == "must-not"
    assert iep.permitted_actions == "externally-visible-direct-actions"
    assert iep.start is not None and iep.end is None
    info = mk.classify_marking_definition(IEP_EXAMPLE)
    assert info.kind == "iep" and info.level == mk.AMBER


def test_iep_first_json_spelling_is_rejected():
    ext = dict(IEP_EXAMPLE["extensions"][mk.IEP2_EXTENSION_ID])
    ext["attribution"] = ext.pop("provider_attribution")
    bad = {**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext}}
    with pytest.raises(ValueError, match="provider_attribution"):
        mk.parse_iep(bad)
    assert mk.classify_marking_definition(bad).kind == "unknown"
    ext2 = dict(IEP_EXAMPLE["extensions"][mk.IEP2_EXTENSION_ID])
    ext2["id"] = ext2.pop("iep_id")
    with pytest.raises(ValueError, match="iep_id"):
        mk.parse_iep({**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext2}})


def test_iep_tlp_uses_tlp1_white_not_clear():
    ext = dict(IEP_EXAMPLE["extensions"][mk.IEP2_EXTENSION_ID], tlp="white")
    assert mk.parse_iep({**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext}}).tlp == mk.CLEAR
    ext["tlp"] = "clear"
    with pytest.raises(ValueError):
        mk.parse_iep({**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext}})


def test_iep_bad_values_and_missing_fields_are_rejected():
    base = IEP_EXAMPLE["extensions"][mk.IEP2_EXTENSION_ID]
    for change in ({"permitted_actions": "anything"}, {"iep_version": 1.0}, {"start_date": "yesterday"}):
        ext = {**base, **change}
        with pytest.raises(ValueError):
            mk.parse_iep({**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext}})
    ext = {k: v for k, v in base.items() if k != "description"}
    with pytest.raises(ValueError, match="description"):
        mk.parse_iep({**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext}})


def test_iep_validity_window():
    ext = {**IEP_EXAMPLE["extensions"][mk.IEP2_EXTENSION_ID], "end_date": "2023-01-01T00:00:00Z"}
    iep = mk.parse_iep({**IEP_EXAMPLE, "extensions": {mk.IEP2_EXTENSION_ID: ext}})
    assert iep.in_force(iep.start)
    assert not iep.in_force(iep.start - 1)
    assert not iep.in_force(iep.end + 1)


def test_combining_iep_takes_the_most_restrictive_field():
    a = mk.IepPolicy(tlp=mk.GREEN, provider_attribution="may", permitted_actions="externally-visible-direct-actions")
    b = mk.IepPolicy(tlp=mk.AMBER, provider_attribution="must-not", permitted_actions="contact-for-instruction",
                     encrypt_in_transit="must")
    c = mk.combine_iep([a, b])
    assert (c.tlp, c.provider_attribution, c.permitted_actions, c.encrypt_in_transit) == (
        mk.AMBER, "must-not", "contact-for-instruction", "must")


def test_non_official_tlp_ids_are_unknown():
    fake_tlp1 = {"type": "marking-definition", "spec_version": "2.1",
                 "id": "marking-definition--613f2e26-407d-48c7-9eca-b8e91df99dc0", "created": "2017-01-20T00:00:00.000Z",
                 "definition_type": "tlp", "definition": {"tlp": "white"}}
    assert mk.classify_marking_definition(fake_tlp1).kind == "unknown"
    fake_tlp2 = {**mk.TLP2_MARKINGS[mk.TLP2_IDS[mk.CLEAR]], "id": "marking-definition--00000000-0000-4000-8000-000000000000"}
    assert mk.classify_marking_definition(fake_tlp2).kind == "unknown"
    assert mk.classify_marking_definition(None, "marking-definition--00000000-0000-4000-8000-000000000000").kind == "unknown"


def test_statement_marking_is_not_a_tlp_level():
    md = {"type": "marking-definition", "id": "marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168",
          "definition_type": "statement", "definition": {"statement": "Copyright MITRE"}}
    info = mk.classify_marking_definition(md)
    assert info.kind == "statement" and info.level is None
