"""Node configuration is validated on load; a bad file gives one line naming the file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exchange.config import collections_dir, load_node
from exchange.errors import ConfigError

SRC = collections_dir() / "us" / "node.yaml"


@pytest.mark.parametrize("node", ["us", "rok"])
def test_shipped_nodes_load(node):
    loaded = load_node(node)
    cfg = loaded.config
    assert loaded.identity["type"] == "identity"
    roles = {c.role for c in cfg.collections}
    assert roles == {"own", "partner-read", "partner-inbox", "partner-receipts"}
    for partner in cfg.partners:
        cfg.partner_collection(partner, "partner-read")  # one read collection per partner
        if not cfg.partners[partner].read_only:
            cfg.partner_collection(partner, "partner-inbox")


def _bad(tmp_path: Path, old: str, new: str) -> Path:
    text = SRC.read_text()
    assert old in text
    node_dir = tmp_path / "bad"
    node_dir.mkdir()
    (node_dir / "node.yaml").write_text(text.replace(old, new, 1))
    shutil.copy(collections_dir() / "identities.json", tmp_path / "identities.json")
    return node_dir


@pytest.mark.parametrize(
    "old,new,expected",
    [
        ("max_page_size: 1000", "max_page_sze: 1000", r"node.yaml:\d+: max_page_sze: unknown key"),
        ("read: [rok-read, rok-receipts]", "read: [rok-reed, rok-receipts]", r"node.yaml:\d+: accounts.0.read.0: unknown collection 'rok-reed'"),
        ("    role: own", "    role: owner", r"node.yaml:\d+: collections.0.role: "),
        ("id: e3a18dc0-a9f3-466f-95d9-d848c4da8e7f", "id: not-a-uuid", r"collections.0.id: .*UUID"),
        (
            "identity: identity--371ec1f1-c078-4fd3-9eff-c233c753c388",
            "identity: identity--00000000-0000-4000-8000-000000000000",
            r"identity: .* is not in identities.json",
        ),
        (
            "    partner: rok\n    description: The ROK",
            "    partner: japan\n    description: The ROK",
            r"accounts.0.partner: unknown partner 'japan'",
        ),
        ("title: US CTI Partner Node (exercise)", "title: [unclosed", r"node.yaml:\d+: invalid YAML"),
    ],
)
def test_a_bad_file_names_file_line_and_key(tmp_path, old, new, expected):
    node_dir = _bad(tmp_path, old, new)
    with pytest.raises(ConfigError, match=expected) as info:
        load_node(str(node_dir))
    assert "\n" not in str(info.value)
    assert str(node_dir / "node.yaml") in str(info.value)


def test_an_unknown_node_is_a_clear_error():
    with pytest.raises(ConfigError, match="no node 'mars'"):
        load_node("mars")


def test_open_node_waits_for_an_unreachable_database_then_fails_clearly():
    import time

    from exchange.errors import StorageError
    from exchange.node.ops import open_node

    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot initialise database"):
        open_node("us", database="postgresql://nobody@127.0.0.1:9/none?connect_timeout=1", wait=1.5)
    assert time.monotonic() - started >= 1.5


def test_a_write_grant_on_a_partner_read_collection_is_a_config_error(tmp_path):
    src = Path(__file__).resolve().parents[2] / "collections" / "us" / "node.yaml"
    node_dir = tmp_path / "us"
    node_dir.mkdir()
    text = src.read_text().replace("    read: [us-intel, rok-inbox, rok-read, jp-read]\n    write: [us-intel]",
                                   "    read: [us-intel, rok-inbox, rok-read, jp-read]\n    write: [us-intel, jp-read]")
    assert "write: [us-intel, jp-read]" in text
    (node_dir / "node.yaml").write_text(text)
    for extra in src.parent.glob("*.yaml"):
        if extra.name != "node.yaml":
            shutil.copy(extra, node_dir / extra.name)
    with pytest.raises(ConfigError) as exc:
        load_node(str(node_dir))
    assert "analyst" in str(exc.value) and "jp-read" in str(exc.value) and "partner-read" in str(exc.value)
