"""CLI: load (all or nothing), audit verify, report (tables, JSON, HTML), demo-secrets, password files."""

from __future__ import annotations

import json
import stat

import orjson
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.ops import open_node
from exchange.storage import audit
from exchange.storage.store import Store
from tests.conftest import new_indicator

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def _bundle(tmp_path, objs, name="b.json"):
    path = tmp_path / name
    path.write_bytes(orjson.dumps({"type": "bundle", "id": "bundle--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a10", "objects": objs}))
    return path


def test_load_releases_under_policy_and_records_decisions(tmp_path):
    objs = [new_indicator(i, created_by_ref=US_ID, marking=GREEN) for i in range(3)]
    result = CliRunner().invoke(main, ["load", "us", str(_bundle(tmp_path, objs)), "--data-dir", str(tmp_path / "d"), "--init"])
    assert result.exit_code == 0, result.output
    assert "loaded 3 objects into us-intel (3 new)" in result.output
    assert "rok: 3 shared" in result.output
    store = Store.open(data_dir=tmp_path / "d")
    try:
        events = [e["event"] for e in audit.entries(store)]
    finally:
        store.close()
    assert events.count("share") >= 3


def test_load_of_a_bundle_with_one_bad_object_loads_nothing(tmp_path):
    objs = [new_indicator(1), dict(new_indicator(2), modified="not-a-time")]
    result = CliRunner().invoke(main, ["load", "us", str(_bundle(tmp_path, objs)), "--data-dir", str(tmp_path / "d"), "--init"])
    assert result.exit_code != 0
    assert "1 of 2 objects are invalid; nothing loaded" in result.output
    opened = open_node("us", data_dir=tmp_path / "d")
    try:
        assert opened.store.count(opened.node.config.own_collection.id, all_versions=True) == 0
    finally:
        opened.close()


def test_load_refuses_what_is_not_a_bundle(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("{nope")
    result = CliRunner().invoke(main, ["load", "us", str(path), "--data-dir", str(tmp_path / "d"), "--init"])
    assert result.exit_code != 0 and "not JSON" in result.output
    result = CliRunner().invoke(main, ["load", "us", str(tmp_path / "missing.json"), "--data-dir", str(tmp_path / "d"), "--init"])
    assert result.exit_code != 0 and "cannot read" in result.output


def test_audit_verify_on_a_folder_without_a_node_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["audit", "verify", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "no node data here" in result.output


def _logs(tmp_path):
    us = tmp_path / "us"
    objs = [new_indicator(i, created_by_ref=US_ID, marking=GREEN) for i in range(4)]
    objs.append(new_indicator(9, created_by_ref=US_ID, marking="marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"))
    assert CliRunner().invoke(main, ["load", "us", str(_bundle(tmp_path, objs)), "--data-dir", str(us), "--init"]).exit_code == 0
    return us


def test_report_json_counts_each_direction(tmp_path):
    us = _logs(tmp_path)
    result = CliRunner().invoke(main, ["report", "--data-dir", str(us), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["nodes"] == ["us"]
    to_rok = report["directions"]["us->rok"]
    assert to_rok["decisions"]["share"] >= 4 and to_rok["decisions"]["withhold"] >= 1
    assert any(k.startswith("withhold: scf.never-automated") for k in to_rok["clauses"])
    assert to_rok["by_tlp"]["TLP:RED"]["withhold"] == 1


def test_report_html_is_one_self_contained_page_with_charts(tmp_path):
    us = _logs(tmp_path)
    page = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", "--data-dir", str(us), "--html", str(page)])
    assert result.exit_code == 0, result.output
    assert "us->rok" in result.output and f"HTML report written to {page}" in result.output
    text = page.read_text()
    assert text.count("<svg") >= 2
    assert "<script src" not in text and "<link" not in text and "http://" not in text.split("<svg", 1)[0]


def test_demo_secrets_writes_private_files_once(tmp_path):
    runner = CliRunner()
    first = runner.invoke(main, ["demo-secrets", str(tmp_path)])
    assert first.exit_code == 0 and "credentials written" in first.output
    pw = (tmp_path / "us" / "rok").read_text()
    assert len(pw.strip()) >= 20
    assert stat.S_IMODE((tmp_path / "us" / "rok").stat().st_mode) == 0o600
    again = runner.invoke(main, ["demo-secrets", str(tmp_path)])
    assert again.exit_code == 0 and (tmp_path / "us" / "rok").read_text() == pw


def test_account_add_reads_a_password_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("a-long-enough-password\n")
    result = CliRunner().invoke(main, ["account", "add", "us", "rok", "--password-file", str(pw), "--data-dir", str(tmp_path / "d"), "--init"])
    assert result.exit_code == 0 and "(password set)" in result.output
    empty = tmp_path / "empty"
    empty.write_text("\n")
    result = CliRunner().invoke(main, ["account", "add", "us", "rok", "--password-file", str(empty), "--data-dir", str(tmp_path / "d"), "--init"])
    assert result.exit_code != 0 and "empty" in result.output


def test_with_retries_retries_transient_failures_and_passes_others_through():
    import pytest

    from exchange.errors import PartnerError, PartnerUnavailable
    from exchange.sharing.sync import Backoff, Transfer, with_retries

    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise PartnerUnavailable("down")
        return "ok"

    transfer = Transfer("push", "rok")
    assert with_retries("push", flaky, Backoff(first=0.01, attempts=5), transfer) == "ok"
    assert transfer.retries == 2

    def refused():
        raise PartnerError("bad request", status=400)

    with pytest.raises(PartnerError, match="bad request"):
        with_retries("push", refused, Backoff(first=0.01), Transfer("push", "rok"))
    with pytest.raises(PartnerUnavailable):
        with_retries("push", lambda: (_ for _ in ()).throw(PartnerUnavailable("x")), Backoff(first=0.01, attempts=2), Transfer("push", "rok"))
