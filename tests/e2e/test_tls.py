"""Transport security end to end: two node processes over real HTTPS with the demo CA and mutual TLS,
the real sync agent (taxii2-client), refused certificates, and IEP encrypt_in_transit over plain HTTP."""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange.demo.procs import NodeProcess
from exchange.errors import PartnerTLSError
from exchange.node.ops import open_node
from exchange.sharing.client import PartnerClient
from exchange.sharing.release import release_all
from exchange.storage import audit
from exchange.storage.store import Selection, Store
from tests.e2e.conftest import PARTNER, PASSWORDS

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
ROK_ID = "identity--99da2a3b-3031-468d-b273-2f29aec7f816"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
IEP_EXT = "extension-definition--762e2e97-ee51-43e5-a9ea-165fbb862c4a"
TAXII = "application/taxii+json;version=2.1"
CLAUSE = "scf.iep-encrypted-transport"


# -- content --------------------------------------------------------------------------------


def _indicator(creator: str, name: str, markings: list[str]) -> dict:
    return {
        "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created_by_ref": creator,
        "created": "2026-11-20T00:00:00.000Z", "modified": "2026-11-20T00:00:00.000Z", "name": name,
        "pattern": "[domain-name:value = 'tls-test.exercise.example']", "pattern_type": "stix",
        "valid_from": "2026-11-20T00:00:00Z", "object_marking_refs": markings,
    }


def _iep_must(creator: str) -> dict:
    """An IEP 2.0 marking (TLP GREEN, encrypt_in_transit: must) created by ``creator``."""
    return {
        "type": "marking-definition", "spec_version": "2.1", "id": f"marking-definition--{uuid.uuid4()}",
        "created": "2026-11-20T00:00:00.000Z", "created_by_ref": creator, "name": "IEP 2.0 GREEN, encrypt in transit",
        "extensions": {IEP_EXT: {
            "extension_type": "property-extension", "encrypt_in_transit": "must",
            "permitted_actions": "externally-visible-direct-actions", "affected_party_notifications": "may",
            "tlp": "green", "provider_attribution": "may", "unmodified_resale": "may",
            "iep_id": str(uuid.uuid4()), "iep_version": 2.0, "description": "EXERCISE DATA: must be encrypted in transit",
            "start_date": "2024-01-01T00:00:00Z",
        }},
    }


def _publish(pair, node: str, tag: str) -> tuple[dict, dict]:
    """Load into ``node``'s own collection a GREEN indicator and one marked IEP encrypt_in_transit: must; release."""
    creator = US_ID if node == "us" else ROK_ID
    iep = _iep_must(creator)
    plain = _indicator(creator, f"{tag} GREEN", [GREEN])
    secret = _indicator(creator, f"{tag} encrypt-in-transit", [GREEN, iep["id"]])
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        opened.store.add_objects(opened.node.config.own_collection.id, [iep, plain, secret])
        release_all(opened)  # the running server's background releaser may have released them first: either counts
        target = opened.node.config.partner_collection(PARTNER[node], "partner-read").id
        released = {r.stix_id for r in opened.store.iter_rows(Selection(target, versions=("all",)))}
    finally:
        opened.close()
    assert {plain["id"], secret["id"]} <= released  # the policy releases both: only the transport decides
    return plain, secret


def _ids_in(pair, node: str, alias: str) -> set[str]:
    opened = open_node(node, data_dir=pair.procs[node].data_dir)
    try:
        coll = opened.node.config.collection(alias)
        return {r.stix_id for r in opened.store.iter_rows(Selection(coll.id, versions=("all",)))}
    finally:
        opened.close()


def _audit(pair, node: str) -> list[dict]:
    store = Store.open(data_dir=pair.procs[node].data_dir)
    try:
        return list(audit.entries(store))
    finally:
        store.close()


def _wait_for(predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


# -- certificates made here, with cryptography ------------------------------------------------


def _load_ca(pki: Path):
    cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), None)
    return cert, key


def _make_cert(tmp: Path, stem: str, subject: str, issuer_cert, issuer_key, *, not_before, not_after, server: bool = False):
    """A PEM certificate and key in ``tmp``; self-signed when ``issuer_cert`` is None."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name.from_rfc4514_string(subject)
    builder = (
        x509.CertificateBuilder().subject_name(name)
        .issuer_name(issuer_cert.subject if issuer_cert is not None else name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(not_before).not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=issuer_cert is None, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if server:
        import ipaddress

        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    cert = builder.sign(issuer_key if issuer_key is not None else key, hashes.SHA256())
    crt, pem = tmp / f"{stem}.crt", tmp / f"{stem}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    pem.chmod(0o600)
    return crt, pem


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _sync_with(pair, node: str, **replace: str) -> subprocess.CompletedProcess:
    """Run ``node``'s agent once with some TLS options replaced (``ca_file=``, ``cert_file=``, ``key_file=``)."""
    cmd = pair.sync_cmd(node, "--once")
    for opt, value in replace.items():
        flag = "--" + opt.replace("_", "-")
        cmd[cmd.index(flag) + 1] = value
    started = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    out.seconds = time.monotonic() - started  # type: ignore[attr-defined]
    return out


def _refused(out: subprocess.CompletedProcess) -> str:
    """The agent stopped at once with one clear line (no traceback, no retry loop)."""
    assert out.returncode != 0, out.stderr
    lines = out.stderr.strip().splitlines()
    assert lines[-1].startswith("Error: "), out.stderr
    assert "Traceback" not in out.stderr and "retrying" not in out.stderr, out.stderr
    assert out.seconds < 30  # type: ignore[attr-defined]
    return lines[-1]


# -- HTTPS end to end ---------------------------------------------------------------------------


def test_https_pull_and_push_between_the_two_nodes_with_the_demo_ca(tls_pair):
    pair = tls_pair
    assert all(p.url.startswith("https://") for p in pair.procs.values())
    us_plain, us_secret = _publish(pair, "us", "us->rok")
    rok_plain, rok_secret = _publish(pair, "rok", "rok->us")
    # the US agent pulls what ROK released to the US and pushes what the US released to ROK; then the other way
    pair.sync("us", "--once", "--direction", "pull")
    pair.sync("rok", "--once", "--direction", "push")
    assert {rok_plain["id"], rok_secret["id"]} <= _ids_in(pair, "us", "rok-inbox")  # pulled by the US over HTTPS
    pair.sync("us", "--once", "--direction", "push")
    assert {us_plain["id"], us_secret["id"]} <= _ids_in(pair, "rok", "us-inbox")  # pushed by the US over HTTPS
    events = {(e["event"], e["object_id"]) for e in _audit(pair, "us")}
    assert ("pull", rok_secret["id"]) in events and ("push", us_secret["id"]) in events
    assert not any(e["event"] == "transport-withhold" for n in ("us", "rok") for e in _audit(pair, n))
    # the partner account read its collection with its certificate alone (no password) through taxii2-client
    stem = pair.pki / "rok@us"
    client = PartnerClient(pair.procs["us"].url, "rok", "", verify=str(pair.pki / "ca.crt"), cert=(f"{stem}.crt", f"{stem}.key"))
    try:
        assert us_secret["id"] in {o["id"] for page in client.pages("rok-read") for o in page.objects}
    finally:
        client.close()


def test_mutual_tls_the_certificate_names_the_account(tls_pair):
    pair = tls_pair
    url = pair.procs["us"].collection_url("rok-read") + "objects/"
    ca = str(pair.pki / "ca.crt")
    own = (str(pair.pki / "rok@us.crt"), str(pair.pki / "rok@us.key"))

    def get(**kwargs) -> requests.Response:
        return requests.get(url, headers={"Accept": TAXII}, verify=ca, timeout=10, **kwargs)

    assert get(cert=own).status_code == 200
    assert get(cert=own, auth=("rok", PASSWORDS["us"]["rok"])).status_code == 200
    assert get(cert=own, auth=("rok", "not-the-rok-password")).status_code == 401
    alone = get(auth=("rok", PASSWORDS["us"]["rok"]))  # a password alone no longer identifies a partner account
    assert alone.status_code == 401
    assert alone.json()["description"] == "account 'rok' must present its client certificate to node 'us' (mutual TLS)"
    assert alone.headers["Content-Type"].startswith("application/taxii+json")
    # analysts still log in with their passwords
    analyst = requests.get(pair.procs["us"].collection_url("us-intel") + "objects/", headers={"Accept": TAXII}, verify=ca,
                           auth=("analyst", PASSWORDS["us"]["analyst"]), timeout=10)
    assert analyst.status_code == 200


def test_wrong_partner_certificate_is_refused(tls_pair):
    pair = tls_pair
    ca = str(pair.pki / "ca.crt")
    url = pair.procs["us"].collection_url("rok-read") + "objects/"
    # Japan's certificate at the US node, with the ROK account's valid credentials: refused
    jp = (str(pair.pki / "jp@us.crt"), str(pair.pki / "jp@us.key"))
    resp = requests.get(url, headers={"Accept": TAXII}, verify=ca, cert=jp, auth=("rok", PASSWORDS["us"]["rok"]), timeout=10)
    assert resp.status_code == 403
    assert resp.json()["description"] == "the client certificate CN=jp@us belongs to account 'jp'; it cannot act as account 'rok'"
    # with Japan's certificate alone it is Japan, which cannot see the ROK collection (404, existence not leaked)
    assert requests.get(url, headers={"Accept": TAXII}, verify=ca, cert=jp, timeout=10).status_code == 404
    # the ROK agent presenting Japan's certificate, or the certificate meant for the *ROK* node, stops at once
    out = _refused(_sync_with(pair, "rok", cert_file=str(pair.pki / "jp@us.crt"), key_file=str(pair.pki / "jp@us.key")))
    assert "refused account 'rok' (403)" in out and "belongs to account 'jp'; it cannot act as account 'rok'" in out
    out = _refused(_sync_with(pair, "rok", cert_file=str(pair.pki / "us@rok.crt"), key_file=str(pair.pki / "us@rok.key")))
    assert "the client certificate CN=us@rok is not mapped to any account of node 'us'" in out
    assert not _ids_in(pair, "rok", "us-inbox")


def test_partner_certificate_from_the_wrong_ca_is_refused(tls_pair, tmp_path):
    pair = tls_pair
    other_ca, other_key = _make_cert(tmp_path, "other-ca", "CN=not the demo CA", None, None,
                                     not_before=_now() - dt.timedelta(hours=1), not_after=_now() + dt.timedelta(days=1))
    # the agent's CA bundle is not the one that signed the partner's server certificate
    out = _refused(_sync_with(pair, "us", ca_file=str(other_ca)))
    assert "TLS with partner https://127.0.0.1:" in out
    assert "the partner's certificate is not signed by the configured CA (--ca-file)" in out
    # a client certificate for the right subject, signed by another CA, is refused in the handshake
    ca_cert = x509.load_pem_x509_certificate(other_ca.read_bytes())
    ca_key = serialization.load_pem_private_key(other_key.read_bytes(), None)
    crt, key = _make_cert(tmp_path, "forged", "CN=us@rok", ca_cert, ca_key,
                          not_before=_now() - dt.timedelta(hours=1), not_after=_now() + dt.timedelta(days=1))
    out = _refused(_sync_with(pair, "us", cert_file=str(crt), key_file=str(key)))
    assert "the partner refused our client certificate: not signed by a CA it trusts" in out


def test_expired_client_certificate_is_refused(tls_pair, tmp_path):
    pair = tls_pair
    ca_cert, ca_key = _load_ca(pair.pki)
    crt, key = _make_cert(tmp_path, "expired", "CN=us@rok", ca_cert, ca_key,
                          not_before=_now() - dt.timedelta(days=30), not_after=_now() - dt.timedelta(days=1))
    # the agent says so before connecting ...
    out = _refused(_sync_with(pair, "us", cert_file=str(crt), key_file=str(key)))
    assert f"client certificate {crt} (CN=us@rok) expired on " in out
    # ... and the node refuses it in the handshake anyway
    with pytest.raises(requests.exceptions.SSLError, match="(?i)certificate expired"):
        requests.get(pair.procs["rok"].url, headers={"Accept": TAXII}, verify=str(pair.pki / "ca.crt"), cert=(str(crt), str(key)), timeout=10)


def test_expired_partner_server_certificate_is_refused(tls_pair, tmp_path):
    pair = tls_pair
    ca_cert, ca_key = _load_ca(pair.pki)
    crt, key = _make_cert(tmp_path, "expired-server", "CN=rok-node", ca_cert, ca_key, server=True,
                          not_before=_now() - dt.timedelta(days=30), not_after=_now() - dt.timedelta(days=1))
    # our node refuses to serve with it
    serve = subprocess.run(
        [sys.executable, "-m", "exchange", "serve", "rok", "--data-dir", str(pair.procs["rok"].data_dir), "--port", "0",
         "--certfile", str(crt), "--keyfile", str(key)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )
    assert serve.returncode != 0 and serve.stderr.strip().splitlines()[-1].startswith(f"Error: server certificate {crt} (CN=rok-node) expired on ")
    # a partner server presenting it anyway (a bare TLS listener here) is refused by the agent's client
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(crt), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def accept() -> None:
        try:
            conn, _ = listener.accept()
            with ctx.wrap_socket(conn, server_side=True):
                pass
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    client = PartnerClient(f"https://127.0.0.1:{port}/rok/", "us", "", verify=str(pair.pki / "ca.crt"))
    try:
        with pytest.raises(PartnerTLSError, match="the partner's certificate has expired"):
            client.collection("us-read")
    finally:
        client.close()
        listener.close()
        thread.join(timeout=5)


# -- IEP encrypt_in_transit ---------------------------------------------------------------------


def _reveal_all(pair, node: str, account: str, alias: str, object_id: str) -> dict[str, list]:
    """What each read endpoint shows of ``object_id`` (objects, object, versions, manifest by id; and full walks)."""
    client = pair.exchange.client(node, account)
    try:
        shown = client.reveal(alias, object_id)
        shown["walk"] = [o["id"] for page in client.pages(alias) for o in page.objects if o["id"] == object_id]
        shown["manifest-walk"] = [m["id"] for m in client.manifest(alias) if m["id"] == object_id]
        return shown
    finally:
        client.close()


def test_encrypt_in_transit_must_never_crosses_plain_http(bare_pair):
    pair = bare_pair
    assert all(p.url.startswith("http://") for p in pair.procs.values())
    plain, secret = _publish(pair, "us", "plain-http")
    assert {plain["id"], secret["id"]} <= _ids_in(pair, "us", "rok-read")  # released under policy
    # pulled by ROK over plain HTTP: the US node does not serve it
    pair.sync("rok", "--once", "--direction", "pull")
    # pushed by the US over plain HTTP: its agent does not send it
    pair.sync("us", "--once", "--direction", "push")
    arrived = _ids_in(pair, "rok", "us-inbox")
    assert plain["id"] in arrived and secret["id"] not in arrived
    # no read endpoint of the US node shows it over plain HTTP, to the partner or to an analyst
    for account, alias in (("rok", "rok-read"), ("analyst", "rok-read"), ("analyst", "us-intel")):
        shown = _reveal_all(pair, "us", account, alias, secret["id"])
        assert not any(shown.values()), (account, alias, shown)
        assert plain["id"] in _reveal_all(pair, "us", account, alias, plain["id"])["walk"]
    # every withheld decision is in the audit log with the clause and the reason
    withheld = [e for e in _audit(pair, "us") if e["event"] == "transport-withhold"]
    assert withheld and all(e["object_id"] == secret["id"] and e["decision"] == "withhold" and e["clauses"] == [CLAUSE] for e in withheld)
    assert {e["detail"]["endpoint"] for e in withheld} >= {"push", "objects", "object", "versions", "manifest"}
    pushed = [e for e in withheld if e["detail"]["endpoint"] == "push"]
    assert pushed[0]["partner"] == "rok" and "not pushed over plain HTTP" in pushed[0]["detail"]["reason"]
    served = [e for e in withheld if e["detail"].get("account") == "rok"]
    assert served and served[0]["partner"] == "rok" and "not served over plain HTTP" in served[0]["detail"]["reason"]
    # and the report counts it, once, for the direction
    from exchange.sharing.report import build_report, read_logs

    assert build_report(read_logs([pair.procs["us"].data_dir]))["directions"]["us->rok"]["withheld_in_transit"] == 1


def test_encrypt_in_transit_must_crosses_over_tls_and_stays_hidden_if_a_node_later_serves_plain_http(tls_pair):
    pair = tls_pair
    plain, secret = _publish(pair, "us", "tls-then-plain")
    pair.sync("rok", "--once", "--direction", "pull")
    assert {plain["id"], secret["id"]} <= _ids_in(pair, "rok", "us-inbox")
    analyst = _reveal_all(pair, "rok", "analyst", "us-inbox", secret["id"])
    assert analyst["object"] and secret["id"] in analyst["walk"]
    # the ROK node restarted without TLS: what arrived encrypted is not served in the clear
    old = pair.procs["rok"]
    old.stop()
    pair.procs["rok"] = NodeProcess("rok", old.data_dir).start()
    assert pair.procs["rok"].url.startswith("http://")
    shown = _reveal_all(pair, "rok", "analyst", "us-inbox", secret["id"])
    assert not any(shown.values()), shown
    assert plain["id"] in _reveal_all(pair, "rok", "analyst", "us-inbox", plain["id"])["walk"]
    assert _wait_for(lambda: any(e["event"] == "transport-withhold" and e["object_id"] == secret["id"] for e in _audit(pair, "rok")))


# -- the demo ---------------------------------------------------------------------------------------
