"""One-line CLI answers for an analyst's first mistakes (issue 19, item 3), each with its exit code.

The sync agent's (plain HTTP to HTTPS, ``--once``, Ctrl-C) are in ``tests/e2e/test_cli_errors.py``.
"""

from __future__ import annotations

import orjson
import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.ops import open_node
from tests.conftest import new_indicator

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


def _bundle(tmp_path, objs, name="b.json"):
    path = tmp_path / name
    path.write_bytes(orjson.dumps({"type": "bundle", "id": "bundle--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a10", "objects": objs}))
    return path


def _run(*args: str, stdin: str | None = None):
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, [ln for ln in result.stderr.splitlines() if ln.strip()], result.stdout


@pytest.mark.parametrize("command", [
    ["load", "us", "BUNDLE"], ["release", "us"], ["import", "us", "BUNDLE", "--tlp", "green"],
    ["sync", "us", "--partner", "rok", "--partner-url", "http://127.0.0.1:9/us/"], ["serve", "us"],
    ["account", "list", "us"], ["attribution", "status", "us"],
])
def test_a_data_dir_that_does_not_exist_is_one_line_and_creates_nothing(tmp_path, command):
    bundle = _bundle(tmp_path, [new_indicator(1, created_by_ref=US_ID, marking=GREEN)])
    missing = tmp_path / "data" / "nosuchdir"
    args = [str(bundle) if a == "BUNDLE" else a for a in command]
    code, err, _out = _run(*args, "--data-dir", str(missing))
    assert code == 1
    assert err == [f"Error: --data-dir {missing}: no such folder (a typo?); `--init` or `cti-exchange account add` makes a new node there"]
    assert not missing.exists()


def test_init_or_account_add_makes_a_new_node_in_a_new_folder(tmp_path):
    bundle = _bundle(tmp_path, [new_indicator(1, created_by_ref=US_ID, marking=GREEN)])
    code, err, out = _run("load", "us", str(bundle), "--data-dir", str(tmp_path / "a"), "--init")
    assert code == 0, err
    code, err, out = _run("account", "add", "us", "analyst", "--password-stdin", "--data-dir", str(tmp_path / "b"),
                          stdin="a-long-analyst-password\n")
    assert code == 0 and "account 'analyst' saved" in out, err


def test_policy_check_refuses_a_stix_2_0_bundle_as_load_does(tmp_path):
    old = {"type": "indicator", "id": "indicator--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a11", "created": "2017-01-01T00:00:00.000Z",
           "modified": "2017-01-01T00:00:00.000Z", "labels": ["malicious-activity"], "pattern": "[ipv4-addr:value = '198.51.100.1']",
           "valid_from": "2017-01-01T00:00:00Z"}  # STIX 2.0: no spec_version on the object
    bundle = _bundle(tmp_path, [old])
    code, load_err, _out = _run("load", "us", str(bundle), "--data-dir", str(tmp_path / "d"), "--init")
    assert code == 1 and len(load_err) == 1 and "nothing loaded" in load_err[0]
    problem = load_err[0].split("First: ", 1)[1]
    code, err, out = _run("policy", "check", str(bundle), "--from", "us", "--to", "rok")
    assert code == 1 and out == ""
    assert err == [f"Error: {bundle}: 1 of 1 objects are invalid, as `load` would refuse them; nothing judged. First: {problem}"]


def test_load_says_that_a_running_releaser_releases_what_it_loaded(tmp_path):
    data = tmp_path / "d"
    assert _run("account", "add", "us", "analyst", "--data-dir", str(data))[0] == 0
    opened = open_node("us", data_dir=data)
    try:
        with opened.store.try_exclusive() as mine:  # as a serving node's background releaser holds it during a pass
            assert mine
            bundle = _bundle(tmp_path, [new_indicator(i, created_by_ref=US_ID, marking=GREEN) for i in range(4)])
            code, err, out = _run("load", "us", str(bundle), "--data-dir", str(data))
    finally:
        opened.close()
    assert code == 0, err
    assert out.strip() == ("loaded 4 objects into us-intel (4 new); release of the 4 new objects left to the node's background "
                           "releaser (a running server is releasing; `cti-exchange report` shows its decisions)")


def test_policy_explain_shows_that_a_clause_is_a_conservative_local_reading(tmp_path):
    unknown = "marking-definition--0c1b2a3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
    obj = new_indicator(1, created_by_ref=US_ID, marking=unknown)
    bundle = _bundle(tmp_path, [obj])
    code, err, out = _run("policy", "explain", str(bundle), obj["id"], "--from", "us", "--to", "rok")
    assert code == 0, err
    assert "[scf.unknown-marking-default]" in out
    assert "conservative: true (a local reading, not the framework's words): " in out
