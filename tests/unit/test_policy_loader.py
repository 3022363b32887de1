"""Policy files: schema checked on load, errors name the file and the line."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from exchange.errors import ConfigError
from exchange.policy import load_policy
from exchange.policy.model import POLICY_ENV, default_policy_dir

REPO_POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture
def pdir(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(REPO_POLICIES, target)
    return target


def _replace(path: Path, old: str, new: str) -> int:
    text = path.read_text(encoding="utf-8")
    assert old in text, old
    line = text[: text.index(old)].count("\n") + 1
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return line


def test_repository_policies_load_with_every_framework():
    policy = load_policy()
    assert set(policy.frameworks) == {"scf", "sccf", "mdt", "cri", "tri", "cert", "supply", "inbound"}
    assert {"us", "rok", "jp", "joint", "public", "cri"} <= set(policy.parties)
    assert policy.parties["us"].identity == "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
    assert policy.parties["rok"].identity == "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
    assert policy.parties["jp"].identity == "identity--1a0aa608-42e5-4348-afbb-9c3a6e11535e"
    assert policy.parties["joint"].identity == "identity--9909a483-dc4f-404a-96a0-33f5fd316e10"


def test_every_clause_quotes_the_source_verbatim_and_explains_conservative_choices():
    text = (REPO_POLICIES / "frameworks-source.md").read_text(encoding="utf-8")
    for clause in load_policy().clauses:
        assert clause.source.quote in text
        assert not clause.conservative or clause.conservative_note.strip()


def test_default_dir_and_env_override(monkeypatch, pdir):
    assert default_policy_dir() == REPO_POLICIES
    monkeypatch.setenv(POLICY_ENV, str(pdir))
    assert default_policy_dir() == pdir
    assert load_policy().files[0].parent == pdir


def test_unknown_key_names_file_and_line(pdir):
    f = pdir / "sccf.yaml"
    line = _replace(f, "    conservative: true\n", "    conservative: true\n    colour: blue\n")
    with pytest.raises(ConfigError) as exc:
        load_policy(pdir)
    assert str(exc.value) == f"{f}:{line + 1}: clauses.0.colour: unknown key"


def test_bad_marking_name_names_file_and_line(pdir):
    f = pdir / "trilateral.yaml"
    line = _replace(f, "levels: [amber], recipients: [jp]", "levels: [orange], recipients: [jp]")
    with pytest.raises(ConfigError) as exc:
        load_policy(pdir)
    msg = str(exc.value)
    assert msg.startswith(f"{f}:{line}: clauses.1.rule.levels.0: ")
    assert "'amber+strict'" in msg and "\n" not in msg


def test_clause_without_source_names_file_and_line(pdir):
    f = pdir / "supply-chain-mou.yaml"
    text = f.read_text(encoding="utf-8")
    start = text.index("    source:\n")
    end = text.index("    conservative: true")
    f.write_text(text[:start] + text[end:], encoding="utf-8")
    line = text[: text.index("  - id: supply.undisclosed")].count("\n") + 1
    with pytest.raises(ConfigError) as exc:
        load_policy(pdir)
    assert str(exc.value) == f"{f}:{line}: clauses.0.source: required key is missing"


def test_misquoted_source_is_rejected(pdir):
    f = pdir / "mutual-defense-treaty.yaml"
    line = _replace(f, "declared that the Mutual Defense Treaty applies", "declared that the treaty applies")
    with pytest.raises(ConfigError) as exc:
        load_policy(pdir)
    assert str(exc.value) == f"{f}:{line}: clauses.0.source.quote: not found verbatim in frameworks-source.md"


def test_conservative_clause_needs_a_note(pdir):
    f = pdir / "cert-mou.yaml"
    text = f.read_text(encoding="utf-8")
    text = text.replace("    conservative_note: The text does not address victim data; it stays within the CERT-to-CERT channel.\n", "")
    f.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=r"cert-mou.yaml:\d+: clauses.1: .*conservative_note"):
        load_policy(pdir)


def test_unknown_party_and_community_are_errors(pdir):
    f = pdir / "trilateral.yaml"
    _replace(f, "levels: [amber], recipients: [jp]", "levels: [amber], recipients: [kr]")
    with pytest.raises(ConfigError) as exc:
        load_policy(pdir)
    assert str(exc.value).startswith(f"{f}:")
    assert "unknown party 'kr'" in str(exc.value)
    g = pdir / "cert-mou.yaml"
    _replace(f, "recipients: [kr]", "recipients: [jp]")
    _replace(g, "inside: bilateral", "inside: nato")
    with pytest.raises(ConfigError, match=r"cert-mou.yaml:\d+: clauses.0.rule.inside: unknown community 'nato'"):
        load_policy(pdir)


def test_duplicate_clause_id_and_unknown_rule_kind(pdir):
    f = pdir / "supply-chain-mou.yaml"
    _replace(f, "kind: undisclosed-vulnerability", "kind: share-everything")
    with pytest.raises(ConfigError, match=r"supply-chain-mou.yaml:\d+: clauses.0.rule: "):
        load_policy(pdir)
    _replace(f, "kind: share-everything", "kind: undisclosed-vulnerability")
    _replace(f, "id: supply.undisclosed-vulnerabilities", "id: scf.companions")
    with pytest.raises(ConfigError, match="already used|start with 'supply.'"):
        load_policy(pdir)


def test_missing_default_is_an_error(pdir):
    f = pdir / "strategic-cybersecurity-framework.yaml"
    _replace(f, "kind: unmarked-default, decision: withhold", "kind: official-markings")
    with pytest.raises(ConfigError, match="only one clause of kind 'official-markings'"):
        load_policy(pdir)
    (pdir / "strategic-cybersecurity-framework.yaml").unlink()
    with pytest.raises(ConfigError, match="no clause of kind 'unmarked-default'"):
        load_policy(pdir)


def test_bad_yaml_names_file_and_line(pdir):
    f = pdir / "trilateral.yaml"
    f.write_text("framework:\n  id: tri\n  name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"trilateral.yaml:\d+: invalid YAML"):
        load_policy(pdir)


def test_single_framework_file_uses_the_parties_beside_it():
    policy = load_policy(REPO_POLICIES / "strategic-cybersecurity-framework.yaml")
    assert set(policy.frameworks) == {"scf"} and "us" in policy.parties
    with pytest.raises(ConfigError, match="no clause of kind"):
        load_policy(REPO_POLICIES / "trilateral.yaml")


def test_missing_path_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no such policy file or directory"):
        load_policy(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no policy files"):
        load_policy(tmp_path)
