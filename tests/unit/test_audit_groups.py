"""Group audit entries (issue 21): partners deciding alike on one object version share one chained row; every
reader still sees one entry per partner (real SQLite files, the node's own code)."""

from __future__ import annotations

import importlib.util
import sqlite3
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.storage import audit
from exchange.storage.store import DB_FILE, Store

OID = "indicator--00000000-0000-4000-8000-000000000001"
V = "2024-01-01T00:00:00.000Z"


def share(partner: str, reason: str | None = None, *, decision: str = "share", oid: str = OID, clauses=("scf.a",)) -> audit.Entry:
    reason = reason if reason is not None else f"the sender's own TLP:AMBER object goes to {partner} (bilateral)"
    return audit.Entry(decision, partner, oid, V, decision, clauses, {"reason": reason, "tlp": "TLP:AMBER", "removed_fields": []})


# ---------------------------------------------------------------- grouped (pure)


def test_entries_alike_but_for_the_partner_become_one_group_entry():
    out = audit.grouped([share("p1"), share("p2"), share("p3")])
    assert len(out) == 1
    g = out[0]
    assert g.partners == ("p1", "p2", "p3") and g.partner is None
    assert g.detail["reason"] == f"the sender's own TLP:AMBER object goes to {audit.PARTNER_SLOT} (bilateral)"
    assert audit.expand(g) == [share("p1"), share("p2"), share("p3")]


def test_differing_decisions_clauses_or_versions_stay_apart():
    entries = [share("p1"), share("p2", decision="withhold"), share("p3", clauses=("scf.b",)), share("p4", oid=OID[:-1] + "2")]
    assert audit.grouped(entries) == entries


def test_a_name_in_another_role_is_never_merged_wrongly():
    # p2 gets the identity of party p1: the literal 'p1' in its reason is not its recipient name
    p1 = share("p1", "identity of the party 'p1' named in the policy")
    p2 = share("p2", "identity of the party 'p1' named in the policy")
    p3 = share("p3", "identity of the party 'p1' named in the policy")
    out = audit.grouped([p1, p2, p3])
    assert [e.partners or (e.partner,) for e in out] == [("p1",), ("p2", "p3")]
    assert [x for e in out for x in audit.expand(e)] == [p1, p2, p3]


def test_a_reason_holding_the_placeholder_is_not_grouped():
    odd = [share("p1", f"goes to p1 {audit.PARTNER_SLOT}"), share("p2", f"goes to p2 {audit.PARTNER_SLOT}")]
    assert audit.grouped(odd) == odd


def test_names_are_replaced_as_whole_words_only():
    entries = [share("p1", "goes to p1 (not p10, not p1-read)"), share("p2", "goes to p2 (not p10, not p1-read)")]
    out = audit.grouped(entries)
    assert [x for e in out for x in audit.expand(e)] == entries  # lossless whatever was merged
    assert len(out) == 1  # 'p10' and 'p1-read' are not the name p1: left as they are, so the templates agree
    assert out[0].detail["reason"] == f"goes to {audit.PARTNER_SLOT} (not p10, not p1-read)"


def test_a_group_takes_the_position_of_its_first_member_and_others_pass_through():
    other = OID[:-1] + "2"
    cfg = audit.Entry("config", None, detail={"n": 1})
    entries = [share("p1"), share("p1", oid=other), cfg, share("p2"), share("p2", oid=other, decision="withhold"), share("p1")]
    out = audit.grouped(entries)
    assert [(e.object_id, e.decision, e.partner, e.partners) for e in out] == [
        (OID, "share", None, ("p1", "p2")), (other, "share", "p1", ()), (None, None, None, ()),
        (other, "withhold", "p2", ()), (OID, "share", "p1", ()),  # p1 twice about one version: never one group with itself
    ]
    assert out[2] is cfg


def test_grouping_is_lossless_over_a_mixed_batch():
    names = [f"p{i}" for i in range(1, 9)]
    entries = [share(p, decision="withhold" if (i + k) % 3 == 0 else "share", oid=f"indicator--{k:08d}-0000-4000-8000-000000000000")
               for k in range(5) for i, p in enumerate(names)]
    out = audit.grouped(entries)
    assert len(out) < len(entries)
    assert sorted((e for g in out for e in audit.expand(g)), key=repr) == sorted(entries, key=repr)


# ---------------------------------------------------------------- the chain


def test_an_entry_without_partners_hashes_exactly_as_before():
    e = audit.Entry("share", "p1", OID, V, "share", ("scf.a", "cert.b"),
                    {"reason": "goes to p1 (bilateral)", "tlp": "amber", "removed_fields": []})
    assert audit._digest(audit.GENESIS, 1, 1767225600000000, e) == "0a929690776be1da897e3a489495a980b441755f89a3f3445342217d115bd3be"
    assert audit._digest("a" * 64, 7, 5, audit.Entry("config")) == "2d1643c5d506d675c3fff9739ae5d9e10c93085b100223ccdcaac0f92b3bf4ab"


def test_the_member_list_is_part_of_a_group_entrys_hash():
    g = audit.grouped([share("p1"), share("p2")])[0]
    other = audit.Entry(g.event, None, g.object_id, g.version, g.decision, g.clauses, g.detail, ("p1", "p3"))
    assert audit._digest(audit.GENESIS, 1, 1, g) != audit._digest(audit.GENESIS, 1, 1, other)


@pytest.fixture
def store(tmp_path) -> Store:
    s = Store.open(data_dir=tmp_path / "n")
    audit.record(s, audit.grouped([share("p1"), share("p2"), share("p3", decision="withhold")]))
    audit.record(s, [audit.Entry("pull", "p2", OID, V, "accepted")])
    yield s
    s.close()


def test_a_group_row_is_stored_once_and_read_as_one_entry_per_partner(store, tmp_path):
    db = sqlite3.connect(tmp_path / "n" / DB_FILE)
    rows = db.execute("SELECT seq, partner, partners FROM audit ORDER BY seq").fetchall()
    db.close()
    assert rows == [(1, None, '["p1","p2"]'), (2, "p3", None), (3, "p2", None)]
    got = list(audit.entries(store))
    assert [(e["seq"], e["partner"], e["decision"], e.get("group")) for e in got] == [
        (1, "p1", "share", ["p1", "p2"]), (1, "p2", "share", ["p1", "p2"]), (2, "p3", "withhold", None), (3, "p2", "accepted", None),
    ]
    assert got[1]["detail"]["reason"] == "the sender's own TLP:AMBER object goes to p2 (bilateral)"
    assert audit.verify(store).ok


def test_select_entries_finds_group_rows_by_member_partner(store):
    assert [(e["seq"], e["partner"]) for e in audit.select_entries(store, partner="p2")] == [(1, "p2"), (3, "p2")]
    assert [(e["seq"], e["partner"]) for e in audit.select_entries(store, partner="p3")] == [(2, "p3")]
    assert list(audit.select_entries(store, partner="p")) == []  # a name is matched whole, never as a part of another
    assert [e["partner"] for e in audit.select_entries(store, object_id=OID, event=("share",))] == ["p1", "p2"]


@pytest.mark.parametrize("value", ['["p1","p9"]', '["p1"]', None, '"p1"'])
def test_tampering_a_group_rows_partner_list_breaks_verify(store, tmp_path, value):
    db = sqlite3.connect(tmp_path / "n" / DB_FILE)
    with db:
        db.execute("UPDATE audit SET partners = ? WHERE seq = 1", (value,))
    db.close()
    verdict = audit.verify(store)
    assert not verdict.ok and "entry 1" in verdict.problem


def test_a_malformed_group_entry_is_refused(tmp_path):
    s = Store.open(data_dir=tmp_path / "m")
    try:
        for bad in (("p1",), ("p1", "p1")):
            with pytest.raises(ValueError, match="group audit entry"):
                audit.record(s, [audit.Entry("share", None, OID, V, "share", (), {}, bad)])
        with pytest.raises(ValueError, match="group audit entry"):
            audit.record(s, [audit.Entry("share", "p1", OID, V, "share", (), {}, ("p1", "p2"))])
    finally:
        s.close()


# ---------------------------------------------------------------- a release to two partners that decide alike


def _bench():
    spec = importlib.util.spec_from_file_location("fanout_bench", Path(__file__).resolve().parents[2] / "bench" / "fanout_bench.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """Node ``us`` with partners p1 and p2 (both bilateral: alike decisions), 10 mixed-TLP indicators released."""
    from exchange.node.ops import open_node
    from exchange.sharing.release import release_all

    bench = _bench()
    root = tmp_path_factory.mktemp("groups")
    coll_dir, pol_dir = bench.make_config(root, 2)
    mp = pytest.MonkeyPatch()
    mp.setenv("CTI_EXCHANGE_COLLECTIONS", str(coll_dir))
    mp.setenv("CTI_EXCHANGE_POLICIES", str(pol_dir))
    mp.setenv("CTI_EXCHANGE_SIGNING", "off")
    data = root / "data"
    objs = bench.make_objects(10)
    opened = open_node("us", data_dir=data)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, objs, origin="local:test")
        totals = release_all(opened)
    finally:
        opened.close()
    yield data, objs, totals
    mp.undo()


def test_a_release_to_two_alike_partners_writes_one_row_per_object(released):
    data, objs, totals = released
    assert totals["p1"].shared == totals["p2"].shared > 0 and totals["p1"].withheld == totals["p2"].withheld > 0
    db = sqlite3.connect(data / DB_FILE)
    try:
        per_object = db.execute(
            "SELECT object_id, count(*), max(partners) FROM audit WHERE event IN ('share', 'redact', 'withhold') GROUP BY object_id"
        ).fetchall()
    finally:
        db.close()
    assert {o["id"] for o in objs} <= {oid for oid, _, _ in per_object}
    assert all(n == 1 and members == '["p1","p2"]' for _, n, members in per_object)


def test_audit_show_trace_receipts_and_metrics_still_show_both_partners(released):
    from exchange.cli import main
    from exchange.node.observe import StoreCollector
    from exchange.node.ops import open_node
    from exchange.sharing.trace import trace_dirs

    data, objs, totals = released
    oid = objs[2]["id"]  # TLP:AMBER (round robin): its reason names the recipient
    out = CliRunner().invoke(main, ["audit", "show", "--data-dir", str(data), "--object", oid, "--json-lines"])
    assert out.exit_code == 0, out.output
    lines = [orjson.loads(x) for x in out.output.splitlines()]
    assert sorted(x["partner"] for x in lines) == ["p1", "p2"] and len({x["seq"] for x in lines}) == 1
    assert {x["detail"]["reason"].replace(x["partner"], "P") for x in lines} == {lines[0]["detail"]["reason"].replace(lines[0]["partner"], "P")}
    assert all(audit.PARTNER_SLOT not in x["detail"]["reason"] and x["partner"] in x["detail"]["reason"] for x in lines)
    out = CliRunner().invoke(main, ["audit", "show", "--data-dir", str(data), "--partner", "p2", "--json-lines"])
    assert {orjson.loads(x)["partner"] for x in out.output.splitlines()} == {"p2"}
    assert len(out.output.splitlines()) == totals["p2"].evaluated + totals["p2"].companions + totals["p2"].withdrawn

    events = [e for v in trace_dirs(oid, [data])["versions"] for e in v["events"] if e["event"] in ("share", "redact", "withhold")]
    assert sorted(e["partner"] for e in events) == ["p1", "p2"]

    opened = open_node("us", data_dir=data)
    try:
        from exchange.node.receipts import _entries_after
        from exchange.sharing.ui.data import DecisionFilter, decisions_page, journey

        with opened.store.engine.connect() as conn:
            assert _entries_after(conn, "p1", 0)[1] > 0  # the group rows do not hide the partner's entries
        counts: dict[str, float] = {}
        for fam in StoreCollector(opened.node, opened.store).collect():
            if fam.name == "cti_exchange_release_decisions":
                for s in fam.samples:
                    counts[s.labels["partner"]] = counts.get(s.labels["partner"], 0) + s.value
        assert set(counts) == {"p1", "p2"} and counts["p1"] == counts["p2"] > 0
        page, total = decisions_page(opened.store, DecisionFilter(), 1, 7)
        every, same = decisions_page(opened.store, DecisionFilter(), 1, 10_000)
        assert total == same == len(every) == 2 * sum(1 for e in every if e["partner"] == "p1")
        assert page == every[:7] and decisions_page(opened.store, DecisionFilter(), 2, 7)[0] == every[7:14]
        mine, n = decisions_page(opened.store, DecisionFilter(partner="p2"), 1, 10_000)
        assert n == len(mine) == total // 2 and {e["partner"] for e in mine} == {"p2"}
        assert sorted(e["partner"] for e in journey(opened.store, oid)) == ["p1", "p2"]
    finally:
        opened.close()


# ---------------------------------------------------------------- grouped, for any batch (hypothesis)

_entry = st.builds(
    lambda p, d, k, c, r: share(p, r.replace("{p}", p), decision=d, oid=f"indicator--{k:08d}-0000-4000-8000-000000000000", clauses=c),
    st.sampled_from(["p1", "p2", "p3", "rok", "jp"]), st.sampled_from(["share", "withhold", "redact"]), st.integers(0, 3),
    st.sampled_from([("scf.a",), ("scf.b",), ("scf.a", "tri.c")]),
    st.sampled_from(["goes to {p} (bilateral)", "goes to {p} and p1", "withheld from everyone", f"odd {audit.PARTNER_SLOT}"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_entry, max_size=14))
def test_any_batch_groups_losslessly_and_an_entry_that_merges_with_none_passes_through_as_it_was(entries):
    out = audit.grouped(entries)
    assert sorted((e for g in out for e in audit.expand(g)), key=repr) == sorted(entries, key=repr)
    for g in out:
        assert len(set(g.partners)) == len(g.partners)
        if not g.partners:  # not merged: the very entry given, never a templated copy
            assert any(g is e for e in entries)
    # nothing left that could have merged: no two single entries alike but for the partner, of different partners
    singles = [g for g in out if not g.partners and g.event in audit.GROUPED_EVENTS]
    for i, a in enumerate(singles):
        for b in singles[i + 1:]:
            ta, tb = audit._templated(a.detail, a.partner), audit._templated(b.detail, b.partner)
            alike = ta is not None and ta == tb and audit._merge_key(a) == audit._merge_key(b)
            assert not (alike and a.partner != b.partner and not _in_a_group_with(out, a, b)), (a, b)


def _in_a_group_with(out, a, b) -> bool:
    """Whether ``a`` or ``b`` could not join one group because one of their partners is in a group of that key already
    (a partner twice about one version: never one group with itself)."""
    key = audit._merge_key(a)
    return any(audit._merge_key(g) == key and (a.partner in g.partners or b.partner in g.partners) for g in out if g.partners)
