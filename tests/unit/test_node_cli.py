"""The node CLI: account add, account list, collections (public interface)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from exchange.cli import main
from exchange.node.ops import open_node


def test_account_add_stores_only_a_salted_hash(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["account", "add", "us", "auditor", "--password-stdin", "--read", "rok-inbox", "--write", "us-intel", "--data-dir", str(tmp_path)],
        input="s3cret-auditor-password\n",
    )
    assert result.exit_code == 0, result.output
    raw = (tmp_path / "cti-exchange.sqlite").read_bytes()
    assert b"s3cret-auditor-password" not in raw
    opened = open_node("us", data_dir=tmp_path)
    try:
        pw_hash, partner, readable, writable = opened.store.account("auditor")
    finally:
        opened.close()
    assert pw_hash.startswith("scrypt$")
    cfg = opened.node.config
    assert readable == {cfg.collection("rok-inbox").id}
    assert writable == {cfg.collection("us-intel").id}


def test_account_add_updates_an_existing_account(tmp_path):
    runner = CliRunner()
    args = ["account", "add", "us", "auditor", "--data-dir", str(tmp_path)]
    assert runner.invoke(main, args + ["--read", "rok-inbox"]).exit_code == 0
    assert runner.invoke(main, args + ["--read", "jp-read", "--read", "rok-read"]).exit_code == 0
    out = runner.invoke(main, ["account", "list", "us", "--data-dir", str(tmp_path), "--json"])
    rows = {r["name"]: r for r in json.loads(out.output)}
    assert rows["auditor"]["read"] == ["jp-read", "rok-read"]
    assert rows["auditor"]["password_set"] is False


def test_account_add_errors_are_one_line_and_non_zero(tmp_path):
    runner = CliRunner()
    cases = [
        (["account", "add", "us", "x", "--read", "nope", "--data-dir", str(tmp_path)], "no collection 'nope'"),
        (["account", "add", "us", "Bad Name", "--data-dir", str(tmp_path)], "account name"),
        (["account", "add", "us", "x", "--password-stdin", "--data-dir", str(tmp_path)], "no password"),
        (["account", "add", "mars", "x", "--data-dir", str(tmp_path)], "no node 'mars'"),
        (["account", "add", "us", "x"], "--data-dir"),
    ]
    for args, needle in cases:
        result = runner.invoke(main, args, input="short\n" if "--password-stdin" not in args else "")
        assert result.exit_code != 0, args
        assert needle in result.output, (args, result.output)
    short = runner.invoke(main, ["account", "add", "us", "x", "--password-stdin", "--data-dir", str(tmp_path)], input="short\n")
    assert short.exit_code != 0 and "password too short" in short.output


def test_collections_json_lists_who_may_read_and_write():
    result = CliRunner().invoke(main, ["collections", "us", "--json"])
    assert result.exit_code == 0
    rows = {r["alias"]: r for r in json.loads(result.output)}
    assert set(rows) == {"us-intel", "rok-read", "rok-inbox", "jp-read", "rok-receipts"}
    assert set(rows["rok-read"]) == {"id", "alias", "title", "role", "partner", "read", "write"}
    assert rows["rok-read"]["read"] == ["analyst", "rok"] and rows["rok-read"]["write"] == []
    assert rows["rok-inbox"]["write"] == ["rok"]
    assert rows["rok-receipts"]["read"] == ["rok"] and rows["rok-receipts"]["write"] == ["rok"]
    assert "rok" not in rows["us-intel"]["read"] and "jp" not in rows["us-intel"]["read"]


def test_collections_table_renders():
    result = CliRunner().invoke(main, ["collections", "rok"])
    assert result.exit_code == 0 and "us-inbox" in result.output


def test_python_dash_m_runs_the_cli():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "exchange", "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "cti-exchange" in out.stdout


def test_serve_refuses_a_bad_node_with_one_line(tmp_path):
    result = CliRunner().invoke(main, ["serve", "mars", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "no node 'mars'" in result.output and result.output.count("\n") <= 2


def test_serve_refuses_another_nodes_data_dir(tmp_path):
    open_node("rok", data_dir=tmp_path).close()
    result = CliRunner().invoke(main, ["serve", "us", "--data-dir", str(tmp_path)])
    assert result.exit_code != 0 and "belongs to node 'rok'" in result.output
