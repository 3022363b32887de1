"""Origin signatures (``exchange.node.signing``): keys from the PKI, canonical JSON, rotation, revocation, ``verify``."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest
import rfc8785
from click.testing import CliRunner
from cryptography import x509
from hypothesis import given, settings
from hypothesis import strategies as st

from exchange.cli import main
from exchange.config import load_node
from exchange.errors import ConfigError
from exchange.node.pki import init_pki, issue_signing, load_ca, revoke, rotate_signing
from exchange.node.signing import PKI_ENV, NodeSigner, Verifier, canonical, load_node_signer
from exchange.policy.markings import SIGNATURE_EXTENSION_ID, SIGNATURE_TYPE
from exchange.stix import format_timestamp
from exchange.storage.store import now_us
from tests.conftest import new_indicator

US = load_node("us").config
ROK = load_node("rok").config
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    init_pki(d, ("us", "rok"), days=30)
    return d


@pytest.fixture
def signer(pki, monkeypatch) -> NodeSigner:
    monkeypatch.setenv(PKI_ENV, str(pki))
    s = load_node_signer(US)
    assert s is not None
    return s


def _verifier(pki, crl: bool = False) -> Verifier:
    return Verifier.from_files(pki / "ca.crt", [pki / "ca.crl"] if crl else [])


def test_pki_init_gives_each_node_an_ed25519_signing_key_that_is_not_its_tls_key(pki):
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "us-signing.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_agreement and not usage.key_encipherment and not usage.key_cert_sign
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).critical
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage)  # no TLS use
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:stix:{US.identity}"]
    tls = x509.load_pem_x509_certificate((pki / "us.crt").read_bytes())
    assert tls.public_key() != cert.public_key()
    assert oct((pki / "us-signing.key").stat().st_mode & 0o777) == "0o600"


def test_signer_api_signs_and_verifies_bytes(signer):
    assert signer.signer == US.identity and signer.key_id.startswith("sha256:")
    sig = signer.sign(b"audit head")
    assert signer.verify(b"audit head", sig)
    assert not signer.verify(b"audit head!", sig)


def test_no_signer_without_a_pki_or_when_switched_off(pki, monkeypatch):
    monkeypatch.delenv(PKI_ENV, raising=False)
    assert load_node_signer(US) is None
    monkeypatch.setenv(PKI_ENV, str(pki))
    monkeypatch.setenv("CTI_EXCHANGE_SIGNING", "off")
    assert load_node_signer(US) is None


def test_a_missing_signing_key_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv(PKI_ENV, str(tmp_path))
    with pytest.raises(ConfigError, match="cannot read its signing key"):
        load_node_signer(US)


def test_a_signature_verifies_and_any_changed_byte_is_invalid(signer, pki):
    obj = new_indicator(1, marking=GREEN, created_by_ref=US.identity)
    sig = signer.sign_object(obj)
    assert sig["type"] == SIGNATURE_TYPE and SIGNATURE_EXTENSION_ID in sig["extensions"]
    assert (sig["object_ref"], sig["object_modified"], sig["created_by_ref"]) == (obj["id"], obj["modified"], US.identity)
    v = _verifier(pki)
    assert v.check(obj, sig).status == "valid"
    tampered = dict(obj, name=obj["name"][:-1] + "X")
    assert v.check(tampered, sig).status == "invalid"
    moved = dict(sig, derived_from={"id": obj["id"], "modified": "2020-01-01T00:00:00.000Z"})
    assert v.check(obj, moved).status == "invalid"  # the signature covers its own metadata too


def test_a_certificate_cannot_sign_for_another_identity(signer, pki):
    obj = new_indicator(2, marking=GREEN, created_by_ref=ROK.identity)
    forged = dict(signer.sign_object(obj), created_by_ref=ROK.identity)
    state = _verifier(pki).check(obj, forged)
    assert state.status == "invalid" and "not" in state.reason


def test_a_signature_from_another_ca_is_invalid(signer, tmp_path):
    other = tmp_path / "other"
    init_pki(other, ("us",), days=2)
    obj = new_indicator(3, marking=GREEN, created_by_ref=US.identity)
    assert Verifier.from_files(other / "ca.crt").check(obj, signer.sign_object(obj)).status == "invalid"


def test_a_rotated_key_keeps_old_signatures_valid_in_their_window(tmp_path, monkeypatch):
    d = tmp_path / "pki"
    init_pki(d, ("us",), days=30)
    monkeypatch.setenv(PKI_ENV, str(d))
    old = load_node_signer(US)
    obj = new_indicator(4, marking=GREEN, created_by_ref=US.identity)
    before = old.sign_object(obj)
    rotate_signing(d, "us", days=30)
    new = load_node_signer(US)
    assert new.key_id != old.key_id
    after = new.sign_object(obj)
    v = _verifier(d)
    assert v.check(obj, before).status == "valid" and v.check(obj, after).status == "valid"


def test_a_signature_dated_outside_its_certificates_validity_is_invalid(pki):
    ca = load_ca(pki)
    start = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    issued = issue_signing(ca, "us", US.identity, not_before=start, not_after=start + dt.timedelta(days=10))
    s = NodeSigner(issued.key, issued.cert, US.identity)  # type: ignore[arg-type]
    obj = new_indicator(5, marking=GREEN, created_by_ref=US.identity)
    v = _verifier(pki)
    assert v.check(obj, s.sign_object(obj, created="2025-01-05T00:00:00.000Z")).status == "valid"
    late = v.check(obj, s.sign_object(obj, created="2025-03-01T00:00:00.000Z"))
    assert late.status == "invalid" and "validity" in late.reason


def test_a_revoked_keys_signatures_after_revocation_are_invalid(tmp_path, monkeypatch):
    d = tmp_path / "pki"
    init_pki(d, ("us",), days=30)
    monkeypatch.setenv(PKI_ENV, str(d))
    s = load_node_signer(US)
    obj = new_indicator(6, marking=GREEN, created_by_ref=US.identity)
    at = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1)
    early = s.sign_object(obj, created=format_timestamp(int((at - dt.timedelta(minutes=2)).timestamp() * 1e6)))
    late = s.sign_object(obj, created=format_timestamp(now_us()))
    out = CliRunner().invoke(main, ["pki", "revoke", str(d), str(d / "us-signing.crt"), "--at", format_timestamp(int(at.timestamp() * 1e6))])
    assert out.exit_code == 0, out.output
    v = _verifier(d, crl=True)
    assert v.check(obj, early).status == "valid"
    state = v.check(obj, late)
    assert state.status == "invalid" and "revoked" in state.reason
    assert _verifier(d).check(obj, late).status == "valid"  # without the CRL it would pass: the CRL is what revokes


def test_a_revocation_list_not_signed_by_a_trusted_ca_is_ignored(tmp_path, monkeypatch):
    d, other = tmp_path / "pki", tmp_path / "other"
    init_pki(d, ("us",), days=30)
    init_pki(other, ("us",), days=30)
    revoke(other, d / "us-signing.crt")  # another CA "revokes" our key (same serial in its CRL)
    monkeypatch.setenv(PKI_ENV, str(d))
    obj = new_indicator(7, marking=GREEN, created_by_ref=US.identity)
    sig = load_node_signer(US).sign_object(obj)
    assert Verifier.from_files(d / "ca.crt", [other / "ca.crl"]).check(obj, sig).status == "valid"


_json = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json)
def test_canonical_json_is_exactly_rfc8785(value):
    assert canonical(value) == rfc8785.dumps(value)


def test_canonical_json_of_the_seed_content_is_exactly_rfc8785():
    from exchange.demo.run import seed_files
    from exchange.stix import read_bundle

    objs = [o for name in ("us", "rok") for path in seed_files(name) for o in read_bundle(path)]
    assert len(objs) > 2000
    assert all(canonical(o) == rfc8785.dumps(o) for o in objs)


def test_verify_reports_each_object_in_the_issue_json_shape(signer, pki, tmp_path):
    good = new_indicator(8, marking=GREEN, created_by_ref=US.identity)
    bad = new_indicator(9, marking=GREEN, created_by_ref=US.identity)
    redacted = new_indicator(10, marking=GREEN, created_by_ref=US.identity)
    unsigned = new_indicator(11, marking=GREEN, created_by_ref=US.identity)
    sigs = [signer.sign_object(good), signer.sign_object(bad),
            signer.sign_object(redacted, derived_from={"id": redacted["id"], "modified": redacted["modified"]})]
    tampered = copy.deepcopy(bad)
    tampered["pattern"] = tampered["pattern"].replace("198", "199")
    bundle = tmp_path / "b.json"
    bundle.write_text(json.dumps({"type": "bundle", "id": "bundle--6b9a7c1e-8b1e-4a49-9a35-0f3f0a2b7c11",
                                  "objects": [*sigs, good, tampered, redacted, unsigned]}))
    out = CliRunner().invoke(main, ["verify", str(bundle), "--ca-file", str(pki / "ca.crt"), "--json"])
    assert out.exit_code == 1, out.output  # one invalid
    report = json.loads(out.output)
    assert set(report) == {"objects", "valid", "invalid", "unsigned"}
    assert (report["valid"], report["invalid"], report["unsigned"]) == (2, 1, 1)
    rows = {r["id"]: r for r in report["objects"]}
    assert all(set(r) == {"id", "modified", "signer", "status", "derived_from"} for r in rows.values())
    assert rows[good["id"]] == {"id": good["id"], "modified": good["modified"], "signer": US.identity, "status": "valid", "derived_from": None}
    assert rows[bad["id"]]["status"] == "invalid"
    assert rows[redacted["id"]]["derived_from"] == {"id": redacted["id"], "modified": redacted["modified"]}
    assert rows[unsigned["id"]]["status"] == "unsigned" and rows[unsigned["id"]]["signer"] is None
    clean = tmp_path / "c.json"
    clean.write_text(json.dumps({"objects": [sigs[0], good]}))
    ok = CliRunner().invoke(main, ["verify", str(clean), "--ca-file", str(pki / "ca.crt")])
    assert ok.exit_code == 0 and "1 valid, 0 invalid, 0 unsigned" in ok.output


def test_verify_without_a_ca_is_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv(PKI_ENV, raising=False)
    (tmp_path / "b.json").write_text('{"objects": []}')
    out = CliRunner().invoke(main, ["verify", str(tmp_path / "b.json")])
    assert out.exit_code != 0 and "--ca-file" in out.output and len(out.output.strip().splitlines()) == 1


# -- inbound rules with signature states (pure: exchange.policy.inbound) ------------------------------------

JP_ID = "identity--1a0aa608-42e5-4348-afbb-9c3a6e11535e"


def _rules(signing: bool = True):
    from exchange.policy.inbound import InboundRules

    others = frozenset({US.identity, JP_ID})
    return InboundRules(config=US.inbound, partner_identity=ROK.identity, joint_identity=US.joint_identity, other_parties=others,
                        node_identity=US.identity, signing_parties=frozenset({ROK.identity}) if signing else frozenset())


def _judge(rules, obj, state):
    return rules.judge([obj], signatures=lambda _o: state).get(0)


def test_third_party_content_relayed_by_the_partner_is_accepted_only_with_that_partys_valid_signature():
    from exchange.policy.inbound import SignatureState

    obj = new_indicator(20, marking=GREEN, created_by_ref=JP_ID)
    assert _judge(_rules(), obj, SignatureState("unsigned")).startswith("inbound.creator-is-partner")
    assert _judge(_rules(), obj, SignatureState("valid", JP_ID)) is None
    assert _judge(_rules(), obj, SignatureState("valid", ROK.identity)).startswith("inbound.creator-is-partner")  # ROK's word, not Japan's
    assert _judge(_rules(), obj, SignatureState("invalid", JP_ID, "changed")).startswith("inbound.signature-invalid")


def test_this_nodes_own_objects_are_never_accepted_back_even_signed():
    from exchange.policy.inbound import SignatureState

    obj = new_indicator(21, marking=GREEN, created_by_ref=US.identity)
    assert _judge(_rules(), obj, SignatureState("valid", US.identity)).startswith("inbound.creator-is-partner")


def test_unsigned_objects_of_a_signing_partner_are_refused_only_when_signing_is_on():
    from exchange.policy.inbound import SignatureState

    obj = new_indicator(22, marking=GREEN, created_by_ref=ROK.identity)
    assert _judge(_rules(), obj, SignatureState("unsigned")).startswith("inbound.signature-required")
    assert _judge(_rules(signing=False), obj, SignatureState("unsigned")) is None
    assert _judge(_rules(), obj, SignatureState("valid", ROK.identity)) is None


def test_a_signature_object_of_a_refused_object_is_refused_with_it():
    from exchange.policy.inbound import SignatureState

    obj = new_indicator(23, marking=GREEN, created_by_ref=ROK.identity)
    sig = {"type": SIGNATURE_TYPE, "id": f"{SIGNATURE_TYPE}--6b9a7c1e-8b1e-4a49-9a35-0f3f0a2b7c12", "object_ref": obj["id"],
           "object_modified": obj["modified"], "algorithm": "Ed25519", "key_id": "sha256:00", "certificate": "AA==",
           "signature": "AA==", "created_by_ref": ROK.identity}
    refused = _rules().judge([sig, obj], signatures=lambda _o: SignatureState("invalid", ROK.identity, "changed"))
    assert refused[1].startswith("inbound.signature-invalid") and refused[0].startswith("inbound.signature-invalid")
    assert _rules().judge([{"type": SIGNATURE_TYPE, "id": sig["id"]}])[0].startswith("inbound.signature-invalid")


# -- batch signatures: one Ed25519 signature over a Merkle root, one companion per version ----------------------


def _legacy_signature(signer: NodeSigner, obj: dict) -> dict:
    """A per-version signature in the format before batches (no merkle_root), as nodes wrote it until 1.1.0."""
    import base64

    from exchange.node.signing import _payload, signature_id

    stamp = format_timestamp(now_us())
    sig = {"type": SIGNATURE_TYPE, "spec_version": "2.1", "id": signature_id(obj["id"], obj["modified"], signer.signer),
           "created": stamp, "modified": stamp, "created_by_ref": signer.signer,
           "object_ref": obj["id"], "object_modified": obj["modified"], "algorithm": "Ed25519", "canonicalization": "RFC8785",
           "key_id": signer.key_id, "certificate": signer.certificate,
           "extensions": {SIGNATURE_EXTENSION_ID: {"extension_type": "new-sdo"}}}
    sig["signature"] = base64.b64encode(signer.sign(_payload(sig, obj))).decode("ascii")
    return sig


def test_a_batch_has_one_signature_and_each_version_verifies_alone(signer, pki):
    objs = [new_indicator(i, marking=GREEN, created_by_ref=US.identity) for i in range(37)]
    sigs = signer.sign_batch([(o, None) for o in objs])
    assert len(sigs) == len(objs) and len({s["signature"] for s in sigs}) == 1 and len({s["merkle_root"] for s in sigs}) == 1
    assert [s["object_ref"] for s in sigs] == [o["id"] for o in objs]
    v = _verifier(pki)
    for obj, sig in zip(reversed(objs), reversed(sigs), strict=True):  # each alone, in any order: no other version needed
        assert v.check(obj, sig).status == "valid"
    assert len(v._statements) == 1  # the batch's one Ed25519 signature was verified once
    assert _verifier(pki).check(objs[5], sigs[5]).status == "valid"  # a verifier holding only that one pair


def test_a_changed_version_or_path_of_a_batch_is_invalid_and_the_others_stay_valid(signer, pki):
    objs = [new_indicator(i, marking=GREEN, created_by_ref=US.identity) for i in range(9)]
    sigs = signer.sign_batch([(o, None) for o in objs])
    v = _verifier(pki)
    tampered = dict(objs[3], name="changed")
    assert v.check(tampered, sigs[3]).status == "invalid"
    assert v.check(objs[4], dict(sigs[3], object_ref=objs[4]["id"])).status == "invalid"  # another version's proof
    swapped = dict(sigs[2], merkle_path=sigs[1]["merkle_path"])
    assert v.check(objs[2], swapped).status == "invalid"
    assert v.check(objs[2], dict(sigs[2], merkle_path="x")).status == "invalid"
    assert v.check(objs[2], dict(sigs[2], merkle_root=sigs[2]["merkle_root"][::-1])).status == "invalid"
    assert v.check(objs[2], dict(sigs[2], created="2030-01-01T00:00:00.000Z")).status == "invalid"  # the statement's time
    assert v.check(objs[2], dict(sigs[2], derived_from={"id": objs[2]["id"], "modified": objs[2]["modified"]})).status == "invalid"
    assert all(v.check(o, s).status == "valid" for o, s in zip(objs, sigs, strict=True))


def test_a_forged_root_signature_is_invalid_even_after_a_valid_batch_was_cached(signer, pki):
    a = signer.sign_batch([(new_indicator(i, created_by_ref=US.identity), None) for i in range(3)])
    objs = [new_indicator(i, created_by_ref=US.identity) for i in range(3)]
    b = signer.sign_batch([(o, None) for o in objs])
    v = _verifier(pki)
    assert v.check(objs[0], b[0]).status == "valid"
    forged = dict(b[1], signature=a[0]["signature"])  # a valid signature, but of another batch's root
    assert v.check(objs[1], forged).status == "invalid"


def test_redactions_in_a_batch_name_their_source_version(signer, pki):
    src = new_indicator(1, marking=GREEN, created_by_ref=US.identity)
    copy_ = dict(src, description="redacted")
    plain = new_indicator(2, marking=GREEN, created_by_ref=US.identity)
    sigs = signer.sign_batch([(copy_, {"id": src["id"], "modified": src["modified"]}), (plain, None)])
    state = _verifier(pki).check(copy_, sigs[0])
    assert state.status == "valid" and state.derived_from == {"id": src["id"], "modified": src["modified"]}
    assert "derived_from" not in sigs[1]


@settings(max_examples=40, deadline=None)
@given(size=st.integers(1, 70), data=st.data())
def test_any_subset_of_a_batch_verifies_on_its_own(pki, size, data):
    """A relayed subset (another node pages or releases only some of the batch) verifies with only its objects present."""
    import os

    os.environ[PKI_ENV] = str(pki)
    try:
        signer = load_node_signer(US)
    finally:
        os.environ.pop(PKI_ENV, None)
    assert signer is not None
    objs = [new_indicator(i, created_by_ref=US.identity) for i in range(size)]
    sigs = signer.sign_batch([(o, None) for o in objs])
    keep = data.draw(st.lists(st.integers(0, size - 1), unique=True, min_size=1))
    from exchange.node.signing import verify_report

    report = verify_report([x for i in keep for x in (sigs[i], objs[i])], _verifier(pki))
    assert (report["valid"], report["invalid"], report["unsigned"]) == (len(keep), 0, 0)


def test_per_version_signatures_of_the_format_before_batches_still_verify(signer, pki):
    obj = new_indicator(3, marking=GREEN, created_by_ref=US.identity)
    old = _legacy_signature(signer, obj)
    v = _verifier(pki)
    assert "merkle_root" not in old and v.check(obj, old).status == "valid"
    assert v.check(dict(obj, name="changed"), old).status == "invalid"


def test_the_former_signature_extension_definition_is_still_official():
    from exchange.policy.inbound import _official
    from exchange.policy.markings import FORMER_OFFICIAL, SIGNATURE_EXTENSION_DEFINITION

    former = FORMER_OFFICIAL[SIGNATURE_EXTENSION_ID][0]
    assert former["modified"] < SIGNATURE_EXTENSION_DEFINITION["modified"] and former["version"] == "1.0.0"
    assert _official(former) is None and _official(SIGNATURE_EXTENSION_DEFINITION) is None
    assert _official(dict(former, name="x")) is not None


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=60), st.text(min_size=1, max_size=30), st.text(min_size=1, max_size=60))
def test_signature_ids_are_the_rfc4122_name_based_uuids_they_always_were(object_id, version, signer):
    import uuid

    from exchange.node.signing import _NS, signature_id

    assert signature_id(object_id, version, signer) == f"{SIGNATURE_TYPE}--{uuid.uuid5(_NS, f'{object_id}|{version}|{signer}')}"


def test_signatures_are_written_just_before_what_they_sign_and_envelopes_count_content(signer):
    from collections import namedtuple

    from exchange.sharing.signatures import extension_definition, interleaved
    from exchange.sharing.sync import _envelope_rows

    objs = [new_indicator(i, created_by_ref=US.identity) for i in range(5)]
    sigs = signer.sign_batch([(o, None) for o in objs[:4]])  # the last one unsigned
    out = interleaved([extension_definition(), *sigs], objs)
    pairs = [x for s, o in zip(sigs, objs, strict=False) for x in (s["id"], o["id"])]
    assert [o["id"] for o in out] == [SIGNATURE_EXTENSION_ID, *pairs, objs[4]["id"]]
    Row = namedtuple("Row", "stix_id")
    rows = [Row(o["id"]) for o in out]
    assert _envelope_rows(rows, 2) == rows[:5]  # the extension definition, sig, obj, sig, obj: two objects
    assert _envelope_rows(rows, 5) == rows and _envelope_rows(rows, 50) == rows


def test_a_large_batch_is_signed_as_trees_of_bounded_size(signer, pki):
    from exchange.node.signing import TREE_LEAVES

    objs = [new_indicator(i, created_by_ref=US.identity) for i in range(2 * TREE_LEAVES + 3)]
    sigs = signer.sign_batch([(o, None) for o in objs])
    assert len({s["merkle_root"] for s in sigs}) == 3 and max(len(s["merkle_path"]) for s in sigs) <= (TREE_LEAVES - 1).bit_length()
    v = _verifier(pki)
    assert all(v.check(o, s).status == "valid" for o, s in zip(objs, sigs, strict=True)) and len(v._statements) == 3


# -- batch companions (extension 1.2.0): one x-cti-signature per batch, listing its members ------------------------


def _bundle(tmp_path, name: str, objs: list[dict]):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "bundle", "id": "bundle--6b9a7c1e-8b1e-4a49-9a35-0f3f0a2b7c13", "objects": objs}))
    return path


def test_one_batch_companion_signs_a_batch_and_any_subset_of_its_members_verifies_alone(signer, pki, tmp_path):
    from exchange.node.signing import TREE_LEAVES, covered, member_of

    objs = [new_indicator(100 + i, marking=GREEN, created_by_ref=US.identity) for i in range(7)]
    copy_ = dict(objs[6], name="redacted copy")
    items = [(o, None) for o in objs[:6]] + [(copy_, {"id": objs[6]["id"], "modified": objs[6]["modified"]})]
    [sig] = signer.sign_together(items)
    assert sig["created_by_ref"] == US.identity and len(sig["members"]) == 7 and "object_ref" not in sig
    assert set(covered(sig)) == {member_of(o) for o in [*objs[:6], copy_]}
    text = json.dumps(sig)
    assert not any(o["id"] in text for o in objs)  # a recipient of a subset learns no id of the other members
    assert sig["members"][6] == {"member": member_of(copy_), "leaf": sig["members"][6]["leaf"], "derived_from_same": True}
    subset = [objs[1], objs[4], copy_]  # what a relayer forwards, however a partner pages: the companion and some members
    out = CliRunner().invoke(main, ["verify", str(_bundle(tmp_path, "subset.json", [sig, *subset])), "--ca-file", str(pki / "ca.crt"), "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert (report["valid"], report["invalid"], report["unsigned"]) == (3, 0, 0)
    rows = {r["id"]: r for r in report["objects"]}
    assert rows[objs[1]["id"]] == {"id": objs[1]["id"], "modified": objs[1]["modified"], "signer": US.identity, "status": "valid",
                                   "derived_from": None}
    assert rows[copy_["id"]]["derived_from"] == {"id": objs[6]["id"], "modified": objs[6]["modified"]}
    many = signer.sign_together([(new_indicator(200 + i, created_by_ref=US.identity), None) for i in range(TREE_LEAVES + 1)])
    assert [len(s["members"]) for s in many] == [TREE_LEAVES, 1]  # one Ed25519 signature per tree of at most TREE_LEAVES


def test_a_tampered_member_is_invalid_while_the_rest_of_its_batch_stays_valid(signer, pki):
    objs = [new_indicator(300 + i, marking=GREEN, created_by_ref=US.identity) for i in range(4)]
    [sig] = signer.sign_together([(o, None) for o in objs])
    v = _verifier(pki)
    tampered = dict(objs[2], name="changed in transit")
    state = v.check(tampered, sig)
    assert state.status == "invalid" and "changed" in state.reason
    assert all(v.check(o, sig).status == "valid" for o in objs)
    other = new_indicator(399, created_by_ref=US.identity)
    assert v.check(other, sig).status == "invalid"  # not a member: the companion names other versions
    moved = copy.deepcopy(sig)
    moved["members"][0]["derived_from"] = {"id": objs[0]["id"], "modified": "2020-01-01T00:00:00.000Z"}
    assert v.check(objs[0], moved).status == "invalid"  # derived_from is in the leaf


def test_a_forged_member_list_or_root_is_refused_even_after_the_valid_one_was_cached(signer, pki):
    import base64

    from exchange.node.signing import _leaf, merkle_root

    objs = [new_indicator(400 + i, marking=GREEN, created_by_ref=US.identity) for i in range(3)]
    [sig] = signer.sign_together([(o, None) for o in objs])
    v = _verifier(pki)
    assert all(v.check(o, sig).status == "valid" for o in objs)  # statement and member list now cached
    forged_obj = dict(objs[1], name="forged")
    leaves = [base64.b64decode(m["leaf"]) for m in sig["members"]]
    leaves[1] = _leaf(forged_obj)
    forged = copy.deepcopy(sig)
    forged["members"][1]["leaf"] = base64.b64encode(leaves[1]).decode()
    assert v.check(forged_obj, forged).status == "invalid"  # the old root no longer matches the listed leaves
    forged["merkle_root"] = base64.b64encode(merkle_root(leaves)).decode()  # a consistent tree, but not what was signed
    state = v.check(forged_obj, forged)
    assert state.status == "invalid" and "changed" in state.reason
    mutated = copy.deepcopy(sig)
    v.check(objs[0], mutated)
    mutated["members"][1]["leaf"] = forged["members"][1]["leaf"]  # changed in place after a check: not served from the cache
    assert v.check(forged_obj, mutated).status == "invalid"


def test_a_companion_without_its_certificate_verifies_with_a_certificate_known_beforehand(signer, pki, tmp_path):
    obj = new_indicator(500, marking=GREEN, created_by_ref=US.identity)
    [sig] = signer.sign_together([(obj, None)])
    bare = {k: v for k, v in sig.items() if k != "certificate"}
    fresh = _verifier(pki)
    state = fresh.check(obj, bare)
    assert state.status == "invalid" and "no certificate" in state.reason
    assert fresh.check(obj, sig).status == "valid"  # the first companion with the certificate makes it known
    assert fresh.check(obj, bare).status == "valid"
    known = Verifier.from_files(pki / "ca.crt", cert_files=[pki / "us-signing.crt"])
    assert known.check(obj, bare).status == "valid"
    bundle = tmp_path / "ca-and-signers.pem"  # the --ca-file bundle may carry the signing certificates
    bundle.write_bytes((pki / "ca.crt").read_bytes() + (pki / "us-signing.crt").read_bytes())
    out = CliRunner().invoke(main, ["verify", str(_bundle(tmp_path, "bare.json", [bare, obj])), "--ca-file", str(bundle), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["valid"] == 1
    assert CliRunner().invoke(main, ["verify", str(_bundle(tmp_path, "bare2.json", [bare, obj])), "--ca-file", str(pki / "ca.crt")]).exit_code == 1


def test_a_wrong_certificate_does_not_poison_the_verifiers_key_cache(signer, pki):
    obj = new_indicator(501, marking=GREEN, created_by_ref=US.identity)
    [sig] = signer.sign_together([(obj, None)])
    rok = load_node_signer(ROK)
    v = _verifier(pki)
    wrong = dict(sig, certificate=rok.certificate)  # US's key id, ROK's certificate
    assert v.check(obj, wrong).status == "invalid"
    assert v.check(obj, sig).status == "valid"


def test_the_per_version_batch_format_and_the_batch_companion_share_leaf_tree_and_statement(signer, pki):
    """A 1.1.0 companion (per version, with its Merkle path) and a 1.2.0 one over the same batch carry the same root."""
    objs = [new_indicator(600 + i, created_by_ref=US.identity) for i in range(5)]
    stamp = format_timestamp(now_us())
    old = signer.sign_batch([(o, None) for o in objs], created=stamp)
    [new] = signer.sign_together([(o, None) for o in objs], created=stamp)
    assert {s["merkle_root"] for s in old} == {new["merkle_root"]} and old[0]["signature"] == new["signature"]
    v = _verifier(pki)
    assert all(v.check(o, s).status == "valid" and v.check(o, new).status == "valid" for o, s in zip(objs, old, strict=True))


def test_inbound_keeps_a_batch_companion_unless_every_member_it_covers_is_refused_in_the_batch(signer):
    from exchange.policy.inbound import SignatureState

    rok = load_node_signer(ROK)
    objs = [new_indicator(700 + i, marking=GREEN, created_by_ref=ROK.identity) for i in range(3)]
    [sig] = rok.sign_together([(o, None) for o in objs])
    bad = objs[1]["id"]

    def states(o):
        return SignatureState("invalid", ROK.identity, "changed") if o["id"] == bad else SignatureState("valid", ROK.identity)

    refused = _rules().judge([sig, *objs], signatures=states)
    assert set(refused) == {2} and refused[2].startswith("inbound.signature-invalid")  # the companion and the others stay
    only_bad = _rules().judge([sig, objs[1]], signatures=states)
    assert set(only_bad) == {1}  # two members not in this envelope: the companion is kept for them
    [one] = rok.sign_together([(objs[1], None)])
    assert set(_rules().judge([one, objs[1]], signatures=states)) == {0, 1}  # it signs only a refused version
    assert _rules().judge([dict(sig, members=[{"member": "x"}])])[0].startswith("inbound.signature-invalid")


def test_the_store_finds_the_batch_companion_of_a_version_and_forgets_it_with_the_companion(signer, tmp_path):
    from exchange.node.signing import member_of
    from exchange.storage.store import Selection, Store

    objs = [new_indicator(800 + i, created_by_ref=US.identity) for i in range(3)]
    [sig] = signer.sign_together([(o, None) for o in objs])
    store = Store.open(tmp_path, init=True)
    try:
        coll = "c0ffee00-0000-4000-8000-000000000001"
        store.add_objects(coll, [sig, *objs])
        store.add_objects(coll, [sig])  # again: stored once, indexed once
        assert store.signatures_covering(coll, [member_of(objs[2])]) == [sig]
        assert store.signatures_covering(coll, [member_of(new_indicator(899))]) == []
        assert store.signatures_covering("c0ffee00-0000-4000-8000-000000000002", [member_of(objs[0])]) == []
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM signature_members").scalar() == 3
        store.delete_object(Selection(coll, versions=("all",)), sig["id"])
        assert store.signatures_covering(coll, [member_of(objs[0])]) == []
        with store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM signature_members").scalar() == 0
    finally:
        store.close()


def test_a_redacted_copy_naming_another_source_carries_that_source_and_a_forged_one_is_invalid(signer, pki):
    src = new_indicator(900, marking=GREEN, created_by_ref=US.identity)
    copy_ = dict(new_indicator(901, marking=GREEN, created_by_ref=US.identity), name="redacted")
    [sig] = signer.sign_together([(copy_, {"id": src["id"], "modified": src["modified"]})])
    assert sig["members"][0]["derived_from"] == {"id": src["id"], "modified": src["modified"]}
    v = _verifier(pki)
    state = v.check(copy_, sig)
    assert state.status == "valid" and state.derived_from == {"id": src["id"], "modified": src["modified"]}
    same = copy.deepcopy(sig)
    del same["members"][0]["derived_from"]
    same["members"][0]["derived_from_same"] = True  # claims the copy was made from itself: not what was signed
    assert v.check(copy_, same).status == "invalid"


def test_a_batch_signature_listing_too_many_members_is_malformed_and_not_indexed(signer, pki):
    from exchange.policy.markings import MAX_SIGNATURE_MEMBERS, signature_members

    obj = new_indicator(950, marking=GREEN, created_by_ref=ROK.identity)
    [sig] = load_node_signer(ROK).sign_together([(obj, None)])
    huge = dict(sig, members=sig["members"] * (MAX_SIGNATURE_MEMBERS + 1))
    assert signature_members(huge) == []
    assert _rules().judge([huge])[0].startswith("inbound.signature-invalid")
    assert _verifier(pki).check(obj, huge).status == "invalid"
