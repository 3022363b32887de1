"""IEP encrypt_in_transit on write (the stored flag) and in the policy CLI; TLS error reasons."""

from __future__ import annotations

import ssl

import orjson
from click.testing import CliRunner

from exchange.cli import main
from exchange.node.tls import explain_ssl_error
from exchange.policy.markings import encryption_required
from exchange.storage.store import Selection, Store
from tests.policy.vectorlib import expand

US = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"


def _objects() -> tuple[list[dict], dict[str, str]]:
    return expand([
        {"alias": "must", "type": "marking-definition", "iep": {"tlp": "green", "encrypt_in_transit": "must"}},
        {"alias": "may", "type": "marking-definition", "iep": {"tlp": "green", "encrypt_in_transit": "may"}},
        {"alias": "a", "type": "indicator", "creator": "us", "markings": ["@must"]},
        {"alias": "b", "type": "indicator", "creator": "us", "markings": ["@may"]},
        {"alias": "c", "type": "indicator", "creator": "us", "tlp": "green", "granular": [{"marking": "@must", "selectors": ["description"]}]},
        {"alias": "d", "type": "indicator", "creator": "us", "tlp": "green"},
        {"alias": "e", "type": "indicator", "creator": "us", "tlp": "green",
         "markings": ["marking-definition--00000000-0000-4000-8000-000000000000"]},
    ])


def test_encryption_required_reads_object_and_granular_iep_markings():
    objs, ids = _objects()
    defs = {o["id"]: o for o in objs if o["type"] == "marking-definition"}
    by = {alias: next(o for o in objs if o["id"] == ids[alias]) for alias in "abcde"}
    assert encryption_required(by["a"], defs)
    assert not encryption_required(by["b"], defs)
    assert encryption_required(by["c"], defs)  # a granular marking counts
    assert not encryption_required(by["d"], defs)
    assert encryption_required(by["e"], defs)  # a marking this node cannot read counts as "must"


def test_the_store_flags_on_write_from_the_batch_or_the_same_collection(tmp_path):
    objs, ids = _objects()
    store = Store.open(data_dir=tmp_path)
    try:
        mds = [o for o in objs if o["type"] == "marking-definition"]
        rest = [o for o in objs if o["type"] != "marking-definition"]
        store.add_objects("c1", mds + rest)  # definitions in the same batch
        store.add_objects("c2", mds)
        store.add_objects("c2", rest)  # definitions stored earlier in the same collection
        for cid in ("c1", "c2"):
            rows = {r.stix_id: r.encrypt_in_transit for r in store.iter_rows(Selection(cid, versions=("all",)))}
            assert {alias for alias in "abcde" if rows[ids[alias]]} == {"a", "c", "e"}
            assert not any(rows[ids[m]] for m in ("must", "may"))
            plain = {r.stix_id for r in store.iter_rows(Selection(cid, versions=("all",), plain_transport=True))}
            assert plain == set(rows) - {ids["a"], ids["c"], ids["e"]}
            assert not store.exists(cid, ids["a"], plain_transport=True) and store.exists(cid, ids["a"])
    finally:
        store.close()


def test_policy_check_transport_plain_withholds_encrypt_in_transit_must(tmp_path):
    objs, ids = _objects()
    path = tmp_path / "b.json"
    path.write_bytes(orjson.dumps({"type": "bundle", "id": "bundle--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a10", "objects": objs}))
    runner = CliRunner()
    tls = {d["id"]: d for d in orjson.loads(runner.invoke(main, ["policy", "check", str(path), "--from", "us", "--to", "rok", "--json"]).output)}
    out = runner.invoke(main, ["policy", "check", str(path), "--from", "us", "--to", "rok", "--json", "--transport", "plain"])
    assert out.exit_code == 0, out.output
    plain = {d["id"]: d for d in orjson.loads(out.output)}
    assert tls[ids["a"]]["decision"] == "share"
    assert plain[ids["a"]]["decision"] == "withhold" and plain[ids["a"]]["clauses"] == ["scf.iep-encrypted-transport"]
    assert plain[ids["b"]]["decision"] == tls[ids["b"]]["decision"] == "share"


def test_tls_failures_get_readable_reasons():
    def err(text: str) -> Exception:
        try:
            raise ConnectionError("HTTPSConnectionPool: Max retries exceeded") from ssl.SSLError(1, text)
        except ConnectionError as exc:
            return exc

    assert explain_ssl_error(err("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: certificate has expired")) == \
        "the partner's certificate has expired"
    assert explain_ssl_error(err("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate")) == \
        "the partner's certificate is not signed by the configured CA (--ca-file)"
    assert explain_ssl_error(err("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required")) == \
        "the partner requires a client certificate (--cert-file/--key-file)"
    assert explain_ssl_error(err("[SSL: WRONG_VERSION_NUMBER] wrong version number")).startswith("the partner does not speak TLS")


def test_only_certificate_and_protocol_failures_are_fatal():
    from exchange.node.tls import classify_ssl_error

    def err(exc: BaseException) -> Exception:
        try:
            raise ConnectionError("HTTPSConnectionPool: Max retries exceeded") from exc
        except ConnectionError as outer:
            return outer

    assert classify_ssl_error(err(ssl.SSLError(1, "[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)")))[1]
    # a partner that closes the connection mid-handshake (e.g. while restarting) is retried, not fatal
    reason, fatal = classify_ssl_error(err(ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)")))
    assert not fatal and reason == "EOF occurred in violation of protocol (_ssl.c:2427)"
    assert not classify_ssl_error(err(ConnectionRefusedError(111, "Connection refused")))[1]
