"""``audit show`` / ``audit export`` / ``trace`` over a real node database, with entries of every kind
(including ``withdraw`` entries as the lifecycle code writes them, shown generically)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.ops import open_node
from exchange.sharing.release import release_all
from exchange.storage import audit
from tests.conftest import new_indicator

GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    data = tmp_path_factory.mktemp("audit-cli") / "us"
    ind = new_indicator(1, marking=GREEN, created_by_ref=US)
    opened = open_node("us", data_dir=data)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, [ind])
        release_all(opened)
        audit.record(opened.store, [audit.Entry("withdraw", "rok", ind["id"], ind["modified"], "withdrawn", ("cert.example-withdrawal",),
                                                {"reason": "superseded by a corrected version"})])
    finally:
        opened.close()
    return data, ind


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_audit_show_lists_every_event_kind_and_filters(node):
    data, ind = node
    result = run("audit", "show", "--data-dir", str(data), "--json-lines")
    assert result.exit_code == 0, result.output
    lines = [json.loads(x) for x in result.output.splitlines()]
    assert {"share", "withdraw"} <= {e["event"] for e in lines}
    assert [e["seq"] for e in lines] == sorted(e["seq"] for e in lines)
    only = run("audit", "show", "--data-dir", str(data), "--event", "withdraw", "--partner", "rok", "--object", ind["id"], "--json-lines")
    [w] = [json.loads(x) for x in only.output.splitlines()]
    assert w["decision"] == "withdrawn" and w["clauses"] == ["cert.example-withdrawal"] and w["node"] == "us"
    table = run("audit", "show", "--data-dir", str(data), "--event", "withdraw")
    assert table.exit_code == 0 and "superseded by a corrected version" in table.output and "1 entries" in table.output
    later = run("audit", "show", "--data-dir", str(data), "--since", "2999-01-01T00:00:00Z", "--json-lines")
    assert later.exit_code == 0 and later.output == ""


def test_audit_export_writes_json_lines_whole(node, tmp_path):
    data, _ = node
    out = tmp_path / "audit.jsonl"
    result = run("audit", "export", "--data-dir", str(data), "--output", str(out))
    assert result.exit_code == 0, result.output
    lines = out.read_text().splitlines()
    assert lines and all(json.loads(x)["hash"] for x in lines)
    # after the last entry's predecessor: only the last entry (seq, not the line count: a group row is one line per partner)
    after = run("audit", "export", "--data-dir", str(data), "--after-seq", str(json.loads(lines[-1])["seq"] - 1))
    assert len(after.output.splitlines()) == 1


def test_bad_filters_are_one_line_errors(node):
    data, _ = node
    for args in (("--since", "yesterday"), ("--event", "nonsense")):
        result = run("audit", "show", "--data-dir", str(data), *args)
        assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1, result.output


def test_trace_shows_a_withdrawal_generically(node):
    data, ind = node
    result = run("trace", ind["id"], "--data-dir", str(data), "--json")
    assert result.exit_code == 0, result.output
    [version] = json.loads(result.output)["versions"]
    events = [e["event"] for e in version["events"]]
    assert events[0] == "loaded" and "share" in events and events[-1] == "withdraw"
    text = run("trace", ind["id"], "--data-dir", str(data))
    assert "withdraw -> rok withdrawn [cert.example-withdrawal]: superseded" in text.output, text.output


def test_trace_of_an_unknown_object_says_so(node):
    data, _ = node
    result = run("trace", "indicator--00000000-0000-4000-8000-000000000000", "--data-dir", str(data))
    assert result.exit_code == 0 and "no record" in result.output
    bad = run("trace", "not-an-id", "--data-dir", str(data))
    assert bad.exit_code != 0 and "not a STIX identifier" in bad.output
