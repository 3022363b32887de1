"""``cti-exchange import``: the shared advisory CSV and a defanged plain list become valid STIX 2.1, idempotently.

Real parts: the CLI in-process on a real SQLite node database, the real ATT&CK objects the
``--about`` names resolve to, and ``stix2-validator`` with strict checks and strict types on
every object the import makes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from stix2validator import ValidationOptions, validate_instance

from exchange.cli import main
from exchange.node.ops import open_node
from exchange.policy.markings import TLP2_IDS
from exchange.storage.store import Selection
from tests.conftest import new_indicator

ADVISORY = Path(__file__).resolve().parents[3] / "shared" / "data" / "real" / "advisory-iocs.csv"  # ../shared beside the repository
ATTACK = Path(__file__).resolve().parents[2] / "collections" / "attack-dprk" / "attack-dprk.json"
US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
LAZARUS = "intrusion-set--c93fccb1-e8e8-42cf-ae33-2ad1d183913a"
APPLEJEUS_MALWARE = "malware--e2d34c63-6f5a-41f5-86a2-e2380f27f858"
STRICT = ValidationOptions(strict=True, strict_types=True, version="2.1")


def _cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def attack_node(tmp_path_factory) -> Path:
    """A US node whose own collection holds the ATT&CK objects the tests name (Lazarus Group, AppleJeus), nothing else."""
    base = tmp_path_factory.mktemp("import")
    wanted = {"Lazarus Group", "AppleJeus"}
    objs = [o for o in orjson.loads(ATTACK.read_bytes())["objects"]
            if o.get("name") in wanted or o["type"] in ("identity", "marking-definition")]
    bundle = base / "attack-subset.json"
    bundle.write_bytes(orjson.dumps({"type": "bundle", "id": "bundle--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a10", "objects": objs}))
    return bundle


def _node(tmp_path: Path, attack_bundle: Path) -> Path:
    data = tmp_path / "us"
    code, out, err = _cli("load", "us", str(attack_bundle), "--data-dir", str(data), "--init")
    assert code == 0, err
    return data


@pytest.fixture(scope="module")
def advisory_import(attack_node, tmp_path_factory):
    """The shared advisory CSV imported once (TLP:CLEAR, about Lazarus Group), with its bundle written out."""
    base = tmp_path_factory.mktemp("advisory")
    data = _node(base, attack_node)
    out = base / "import.json"
    code, stdout, stderr = _cli(
        "import", "us", str(ADVISORY), "--data-dir", str(data), "--tlp", "clear", "--source-name", "CISA advisories",
        "--source-url", "https://www.cisa.gov/news-events/cybersecurity-advisories", "--about", "Lazarus Group",
        "--output", str(out), "--json",
    )
    assert code == 0, stderr
    return data, json.loads(stdout), orjson.loads(out.read_bytes())["objects"], base


def _rows() -> list[dict]:
    with open(ADVISORY, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_every_advisory_row_becomes_one_indicator_valid_under_strict_validation(advisory_import):
    _data, summary, objects, _base = advisory_import
    rows = _rows()
    assert summary == {"indicators": len(rows), "created": len(rows), "updated": 0, "unchanged": 0, "refused": []}
    indicators = [o for o in objects if o["type"] == "indicator"]
    assert len(indicators) == len(rows) == 489
    # every indicator, and one relationship per target (they differ only in ids: the validator takes ~30 ms an object)
    one_per_target = {o["target_ref"]: o for o in objects if o["type"] == "relationship"}
    checked = [o for o in objects if o["type"] != "relationship"] + list(one_per_target.values())
    assert len(checked) == len(indicators) + 4 + len(one_per_target)  # identity, TLP marking and its extension definition, report
    problems = {}
    for obj in checked:
        result = validate_instance(obj, STRICT)
        if result.errors or result.warnings:
            problems[obj["id"]] = [str(e) for e in [*result.errors, *result.warnings]]
    assert problems == {}
    assert all(o["valid_from"] < o["valid_until"] for o in indicators)


def test_the_creator_identity_and_the_tlp_marking_travel_in_the_bundle(advisory_import):
    data, _summary, objects, _base = advisory_import
    by_id = {o["id"]: o for o in objects}
    assert by_id[US_ID]["type"] == "identity"
    assert TLP2_IDS[0] in by_id
    made = [o for o in objects if o["type"] in ("indicator", "relationship", "report")]
    assert {o["created_by_ref"] for o in made} == {US_ID}
    assert {tuple(o["object_marking_refs"]) for o in made} == {(TLP2_IDS[0],)}
    opened = open_node("us", data_dir=data)
    try:
        assert opened.store.latest(opened.node.config.own_collection.id, US_ID) is not None
    finally:
        opened.close()


def test_a_report_groups_the_import_with_its_source_and_the_indicators_indicate_the_about_object(advisory_import):
    _data, _summary, objects, _base = advisory_import
    indicators = {o["id"] for o in objects if o["type"] == "indicator"}
    rels = [o for o in objects if o["type"] == "relationship"]
    (report,) = [o for o in objects if o["type"] == "report"]
    assert indicators <= set(report["object_refs"])
    assert {r["id"] for r in rels} <= set(report["object_refs"])
    assert report["external_references"][0]["url"] == "https://www.cisa.gov/news-events/cybersecurity-advisories"
    assert {r["source_ref"] for r in rels if r["target_ref"] == LAZARUS} == indicators
    assert {r["relationship_type"] for r in rels} == {"indicates"}
    # the CSV's malware column links a row to that ATT&CK malware where the node has it
    applejeus_rows = sum(1 for r in _rows() if r["malware"] == "AppleJeus")
    assert applejeus_rows and sum(1 for r in rels if r["target_ref"] == APPLEJEUS_MALWARE) == applejeus_rows


def test_wallet_addresses_are_user_account_patterns_with_eip55_case_kept_byte_for_byte(advisory_import):
    _data, _summary, objects, _base = advisory_import
    patterns = [o["pattern"] for o in objects if o["type"] == "indicator"]
    eth = [r["value"] for r in _rows() if r["type"] == "eth_wallet"]
    assert any(v != v.lower() for v in eth)  # the advisory's EIP-55 mixed-case addresses
    for value in eth:
        assert f"[user-account:account_type = 'ethereum' AND user-account:user_id = '{value}']" in patterns
    btc = [r["value"] for r in _rows() if r["type"] == "btc_wallet"]
    assert all(any(f"user-account:user_id = '{v}'" in p for p in patterns) for v in btc)


def test_reimporting_the_same_file_changes_nothing(advisory_import):
    data, _summary, _objects, _base = advisory_import
    opened = open_node("us", data_dir=data)
    own = opened.node.config.own_collection.id
    try:
        before = opened.store.count(own, all_versions=True)
    finally:
        opened.close()
    code, stdout, stderr = _cli("import", "us", str(ADVISORY), "--data-dir", str(data), "--tlp", "clear", "--source-name",
                                "CISA advisories", "--source-url", "https://www.cisa.gov/news-events/cybersecurity-advisories",
                                "--about", LAZARUS, "--json")
    assert code == 0, stderr
    assert json.loads(stdout) == {"indicators": 489, "created": 0, "updated": 0, "unchanged": 489, "refused": []}
    opened = open_node("us", data_dir=data)
    try:
        assert opened.store.count(own, all_versions=True) == before
    finally:
        opened.close()


def test_an_edited_row_becomes_a_new_version_with_a_later_modified(attack_node, tmp_path):
    data = _node(tmp_path, attack_node)
    rows = _rows()[:5]
    src = tmp_path / "five.csv"

    def write(rows_: list[dict]) -> None:
        with open(src, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(rows_[0]))
            w.writeheader()
            w.writerows(rows_)

    write(rows)
    out1, out2 = tmp_path / "1.json", tmp_path / "2.json"
    assert _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green", "--output", str(out1))[0] == 0
    rows[2] = dict(rows[2], notes="corrected: seen again in 2026")
    write(rows)
    code, stdout, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green", "--output", str(out2), "--json")
    assert code == 0, stderr
    assert json.loads(stdout) == {"indicators": 5, "created": 0, "updated": 1, "unchanged": 4, "refused": []}
    first = {o["id"]: o for o in orjson.loads(out1.read_bytes())["objects"] if o["type"] == "indicator"}
    second = [o for o in orjson.loads(out2.read_bytes())["objects"] if o["type"] == "indicator"]
    (changed,) = [o for o in second if o != first[o["id"]]]
    old = first[changed["id"]]
    assert changed["created"] == old["created"] and changed["modified"] > old["modified"]
    assert "corrected: seen again in 2026" in changed["description"]
    opened = open_node("us", data_dir=data)
    try:
        versions = opened.store.page(Selection(opened.node.config.own_collection.id, ids=(changed["id"],), versions=("all",)), limit=10)[0]
    finally:
        opened.close()
    assert len(versions) == 2


DEFANGED = """\
# from a partner e-mail: defanged
hxxp://update-check[.]example[.]net/payload.exe
198.51.100[.]23
2001:db8::dead:beef
bad-actor[@]mail[.]example[.]org
login-verify[.]info
D41D8CD98F00B204E9800998ECF8427E
da39a3ee5e6b4b0d3255bfef95601890afd80709
e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
dropper_x64.dll
0x098B716B8Aaf21512996dC57EB0615e2383E2f96
bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq

0x098b716B8Aaf21512996dC57EB0615e2383E2f96
not an indicator at all
evil.example.com and 192.0.2.1
"""


def test_a_defanged_plain_list_is_refanged_and_bad_lines_are_listed(attack_node, tmp_path):
    data = _node(tmp_path, attack_node)
    src = tmp_path / "email.txt"
    src.write_text(DEFANGED, encoding="utf-8")
    out = tmp_path / "b.json"
    code, stdout, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "amber", "--source-name",
                                "ROK e-mail 2026-11-30", "--about", "G0032", "--output", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["indicators"], summary["created"]) == (11, 11)
    assert [(r["line"], r["value"]) for r in summary["refused"]] == [
        (14, "0x098b716B8Aaf21512996dC57EB0615e2383E2f96"), (15, "not an indicator at all"), (16, "evil.example.com and 192.0.2.1"),
    ]
    assert "EIP-55" in summary["refused"][0]["reason"] and "not one indicator" in summary["refused"][2]["reason"]
    objects = orjson.loads(out.read_bytes())["objects"]
    patterns = {o["pattern"] for o in objects if o["type"] == "indicator"}
    assert patterns == {
        "[url:value = 'http://update-check.example.net/payload.exe']",
        "[ipv4-addr:value = '198.51.100.23']",
        "[ipv6-addr:value = '2001:db8::dead:beef']",
        "[email-addr:value = 'bad-actor@mail.example.org']",
        "[domain-name:value = 'login-verify.info']",
        "[file:hashes.MD5 = 'd41d8cd98f00b204e9800998ecf8427e']",
        "[file:hashes.'SHA-1' = 'da39a3ee5e6b4b0d3255bfef95601890afd80709']",
        "[file:hashes.'SHA-256' = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855']",
        "[file:name = 'dropper_x64.dll']",
        "[user-account:account_type = 'ethereum' AND user-account:user_id = '0x098B716B8Aaf21512996dC57EB0615e2383E2f96']",
        "[user-account:account_type = 'bitcoin' AND user-account:user_id = 'bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq']",
    }
    assert all(not validate_instance(o, STRICT).errors for o in objects)
    assert {o["object_marking_refs"][0] for o in objects if o["type"] == "indicator"} == {TLP2_IDS[2]}


def test_csv_columns_of_other_names_are_mapped_by_the_columns_option(attack_node, tmp_path):
    data = _node(tmp_path, attack_node)
    src = tmp_path / "other.csv"
    src.write_text("indicator,kind,comment\nhxxps://evil[.]example[.]com/x,url,from a partner\n8.8.8[.]8,ipv4,\nnope,md5,\n", encoding="utf-8")
    code, stdout, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green",
                                "--columns", "value=indicator,type=kind,notes=comment", "--json")
    assert code == 0, stderr
    assert json.loads(stdout) == {"indicators": 2, "created": 2, "updated": 0, "unchanged": 0,
                                  "refused": [{"line": 4, "value": "nope", "reason": "not a valid md5"}]}
    code, _out, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green")
    assert code == 1 and stderr.strip().splitlines() == [
        f"Error: {src}: no 'value' column in the CSV header (indicator, kind, comment); name it with --columns value=COLUMN"
    ]


def test_a_file_that_cannot_be_read_writes_nothing(tmp_path):
    data = tmp_path / "us"
    data.mkdir()
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9.example\n".encode("latin-1"))
    for target, says in ((tmp_path / "missing.csv", "cannot read"), (bad, "not UTF-8 text")):
        code, _out, stderr = _cli("import", "us", str(target), "--data-dir", str(data), "--tlp", "green")
        assert code == 1
        assert len(stderr.strip().splitlines()) == 1 and says in stderr
    assert list(data.iterdir()) == []  # not even a database


def test_an_about_name_that_is_unknown_or_ambiguous_is_one_line_and_nothing_is_written(attack_node, tmp_path):
    data = _node(tmp_path, attack_node)
    src = tmp_path / "one.txt"
    src.write_text("198.51.100.7\n", encoding="utf-8")
    code, _out, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green", "--about", "Kimsuky")
    assert code == 1 and len(stderr.strip().splitlines()) == 1 and "--about 'Kimsuky': no intrusion-set, malware" in stderr
    code, _out, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green", "--about", "AppleJeus")
    assert code == 1 and "names 2 objects" in stderr and APPLEJEUS_MALWARE in stderr
    opened = open_node("us", data_dir=data)
    try:
        assert opened.store.page(Selection(opened.node.config.own_collection.id, types=("indicator",)), limit=5)[0] == []
    finally:
        opened.close()


def test_imported_indicators_leave_only_as_the_policy_releases_them(attack_node, tmp_path):
    data = _node(tmp_path, attack_node)
    src = tmp_path / "two.txt"
    src.write_text("198.51.100.8\n", encoding="utf-8")
    red = tmp_path / "red.txt"
    red.write_text("198.51.100.9\n", encoding="utf-8")
    code, stdout, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "green")
    assert code == 0, stderr
    assert "imported 1 indicators into us-intel (1 created, 0 updated, 0 unchanged, 0 refused); rok: " in stdout
    assert _cli("import", "us", str(red), "--data-dir", str(data), "--tlp", "red")[0] == 0
    opened = open_node("us", data_dir=data)
    try:
        rok_read = opened.node.config.partner_collection("rok", "partner-read").id
        shared = [orjson.loads(r.body) for r in opened.store.page(Selection(rok_read, types=("indicator",)), limit=10)[0]]
    finally:
        opened.close()
    assert [o["pattern"] for o in shared] == ["[ipv4-addr:value = '198.51.100.8']"]


def test_a_bundle_of_indicators_from_elsewhere_is_reimported_under_this_node(attack_node, tmp_path):
    data = _node(tmp_path, attack_node)
    theirs = {"type": "bundle", "id": "bundle--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a12", "objects": [
        dict(new_indicator(1), pattern="[domain-name:value = 'login-verify.info']"),
        dict(new_indicator(2), pattern="[ipv4-addr:value = '198.51.100.44' OR ipv4-addr:value = '198.51.100.45']"),
        {"type": "identity", "spec_version": "2.1", "id": "identity--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a13",
         "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "name": "a sender"},
    ]}
    src = tmp_path / "partner.json"
    src.write_bytes(orjson.dumps(theirs))
    out = tmp_path / "ours.json"
    code, stdout, stderr = _cli("import", "us", str(src), "--data-dir", str(data), "--tlp", "amber", "--output", str(out), "--json")
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert (summary["indicators"], summary["created"]) == (1, 1)
    assert [r["line"] for r in summary["refused"]] == [2]  # a compound pattern is not one indicator
    (ind,) = [o for o in orjson.loads(out.read_bytes())["objects"] if o["type"] == "indicator"]
    assert ind["pattern"] == "[domain-name:value = 'login-verify.info']" and ind["created_by_ref"] == US_ID
