"""``cti-exchange policy check|explain|lint`` through click's CliRunner."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.policy import markings as mk

US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
REPO = Path(__file__).resolve().parents[2]


def _ind(n: int, marking: str, **extra) -> dict:
    obj = {"type": "indicator", "spec_version": "2.1", "id": f"indicator--00000000-0000-4000-8000-{n:012d}",
           "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "created_by_ref": US,
           "name": f"i{n}", "pattern": "[ipv4-addr:value = '198.51.100.1']", "pattern_type": "stix",
           "valid_from": "2024-01-01T00:00:00Z", "object_marking_refs": [marking]}
    obj.update(extra)
    return obj


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    objects = [
        _ind(1, mk.TLP2_IDS[mk.GREEN]),
        _ind(2, mk.TLP2_IDS[mk.RED]),
        _ind(3, mk.TLP2_IDS[mk.GREEN], description="secret source",
             granular_markings=[{"marking_ref": mk.TLP2_IDS[mk.RED], "selectors": ["description"]}]),
    ]
    path = tmp_path / "bundle.json"
    path.write_text(json.dumps({"type": "bundle", "id": "bundle--00000000-0000-4000-8000-000000000001", "objects": objects}))
    return path


def run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_check_prints_a_table_with_decisions_clauses_and_totals(bundle):
    result = run("policy", "check", str(bundle), "--from", "us", "--to", "rok")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "indicator--00000000-0000-4000-8000-000000000001" in out
    assert "scf.own-release-partner" in out and "scf.never-automated" in out and "scf.granular-redact" in out
    assert "total 3: share 1, redact 1, withhold 1" in out


def test_check_json_prints_only_the_decision_list(bundle):
    result = CliRunner().invoke(main, ["policy", "check", str(bundle), "--from", "us", "--to", "rok", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert [d["decision"] for d in data] == ["share", "withhold", "redact"]
    assert all(set(d) == {"id", "type", "decision", "clauses", "removed_fields"} for d in data)
    assert data[2]["removed_fields"] == ["description"]
    assert data[1]["clauses"] == ["scf.never-automated"]
    assert result.stdout.strip().startswith("[") and result.stdout.strip().endswith("]")


def test_explain_shows_the_steps_and_the_source(bundle):
    result = run("policy", "explain", str(bundle), "indicator--00000000-0000-4000-8000-000000000003", "--from", "us", "--to", "rok")
    assert result.exit_code == 0, result.output
    assert "object markings" in result.output and "TLP:GREEN" in result.output
    assert "redact [scf.granular-redact]" in result.output
    assert "Strategic Cybersecurity Cooperation Framework, signed in April 2023" in result.output


def test_lint_lists_the_clauses(tmp_path):
    result = run("policy", "lint", str(REPO / "policies"))
    assert result.exit_code == 0, result.output
    assert "sccf.attribution-relationships" in result.output
    assert "inbound.signature-invalid" in result.output
    assert "ok: 9 files" in result.output


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"type": "report"}', "not a STIX bundle"),
    ('{"type": "bundle", "objects": [{"id": "x"}]}', "object 0 is not a STIX object"),
])
def test_bad_bundle_is_one_line_and_non_zero(tmp_path, content, needle):
    path = tmp_path / "b.json"
    path.write_text(content)
    result = CliRunner().invoke(main, ["policy", "check", str(path), "--from", "us", "--to", "rok"])
    assert result.exit_code != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_bad_policy_and_bad_party_are_one_line_and_non_zero(tmp_path, bundle):
    bad = tmp_path / "pol"
    bad.mkdir()
    (bad / "x.yaml").write_text("parties: {us: {name: US, colour: red}}\n")
    for args, needle in (
        (["--policy", str(bad)], "x.yaml:1: parties.us.colour: unknown key"),
        (["--to", "mars"], "unknown recipient party 'mars'"),
    ):
        argv = ["policy", "check", str(bundle), "--from", "us", *(args if "--to" in args else ["--to", "rok", *args])]
        result = CliRunner().invoke(main, argv)
        assert result.exit_code != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], result.stderr


def test_lint_of_a_broken_dir_fails_in_one_line(tmp_path):
    (tmp_path / "x.yaml").write_text("clauses: 3\n")
    result = CliRunner().invoke(main, ["policy", "lint", str(tmp_path)])
    assert result.exit_code != 0
    assert len(result.stderr.strip().splitlines()) == 1
