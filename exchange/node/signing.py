"""Origin signatures: each node signs every object version it originates or redacts.

A signature is a companion STIX object of the custom type ``x-cti-signature`` (a new SDO defined by
the extension definition ``SIGNATURE_EXTENSION_DEFINITION``, STIX 2.1 s7.3, shipped with the package
like the TLP/IEP definitions), so a plain STIX consumer ignores it and the signed object is never
changed.  It holds the algorithm (Ed25519), the signer (``created_by_ref``: the node's identity), the key
id (``sha256:`` of the signing certificate's DER), the certificate itself, the signature, the versions it
covers and, for a redacted copy, ``derived_from`` (the id and version it was made from).

What is signed: one Ed25519 signature covers up to ``TREE_LEAVES`` versions a node signs together (a release
batch to one recipient, a lifecycle write).  Each version is a leaf of a Merkle tree (SHA-256, leaves
``0x00 || JCS({object_ref, object_modified, derived_from?, signed_object})``, inner nodes ``0x01 || left || right``,
an odd last node carried up unchanged); the signature is over the RFC 8785 canonical JSON (JCS) of the *statement*
``{type, created, created_by_ref, key_id, algorithm, canonicalization, merkle_root}``.  So the signature covers the
exact version and also who signed it, when, with which key and, for a redaction, from what.

Batch form (extension 1.2.0, ``members`` present; ``NodeSigner.sign_together``, what nodes write): **one companion
per tree**, carrying the statement's fields, the signature, the certificate and ``members``: per leaf, in order, the
version's member key (``signed_member``: 16 bytes of SHA-256 of ``"<id>|<version>"``, so a recipient of a subset
learns no id of the versions it did not get), the leaf and, for a redacted copy, ``derived_from`` (or
``derived_from_same`` when that is the member's own id and version).  Any member verifies with the companion alone:
its leaf is recomputed and found among the listed leaves, and the listed leaves lead to the signed root; after
relay (the relayer forwards the origin's companion unchanged), in any subset, however a partner pages.  A companion
is written before the first version it covers; a recipient whose page or envelope begins inside a batch finds the
companion stored from an earlier one by member key (``Store.signatures_covering``, table ``signature_members``).
A verifier checks per companion the member list, key and statement once (``Verifier.session`` for an envelope or a
bundle; the statement's Ed25519 result is cached across batches) and per version one canonical JSON and a hash.
The certificate may be left out of a companion when the verifier knows it beforehand (``--ca-file`` bundle, the PKI
folder's ``*-signing.crt``, or an earlier companion of the same key); nodes still include it (~6 bytes per version).

Older companions still verify: the per-version batch form (1.1.0, ``merkle_root`` and ``merkle_path``: one companion
per version with its leaf's sibling hashes; ``sign_batch`` / ``sign_object`` still write it) and the form before
batches (no ``merkle_root``): the Ed25519 signature is over the JCS of the signature object without its
``signature`` property and with the signed object as the extra member ``signed_object``.

Keys: ``cti-exchange pki init`` gives each node an Ed25519 signing key and certificate
(``<node>-signing.key``/``.crt``), issued by the node's CA with keyUsage digitalSignature only and the
node's STIX identity as a ``urn:stix:identity--...`` URI in the subject alternative name.  It is not the
TLS key: TLS keys are rotated with hostnames and must not sign content.  A signature verifies with the
certificate valid when it was made (its ``created`` within the certificate's validity); a signature made
on or after the key's revocation (the CA's CRL, ``ca.crl``) is invalid.

``NodeSigner`` / ``load_node_signer`` are the API other parts use (the audit head is signed with it too).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import os
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import rfc8785
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from exchange.errors import ConfigError
from exchange.policy.inbound import SignatureState
from exchange.policy.markings import (
    MAX_SIGNATURE_MEMBERS,
    SIGNATURE_EXTENSION_DEFINITION,
    SIGNATURE_EXTENSION_ID,
    SIGNATURE_TYPE,
    signature_members,
    signed_member,
)
from exchange.stix import format_timestamp, object_version, parse_timestamp

__all__ = [
    "ALGORITHM", "NodeSigner", "merkle_tree", "SIGNATURE_TYPE", "Verifier", "canonical", "covered", "identity_uri", "is_signature",
    "load_node_signer", "node_verifier", "signature_id", "signature_index", "signed_member", "signing_dir", "signing_parties",
]

ALGORITHM = "Ed25519"
CANONICALIZATION = "RFC8785"
PKI_ENV = "CTI_EXCHANGE_PKI_DIR"
SWITCH_ENV = "CTI_EXCHANGE_SIGNING"
_NS = uuid.UUID("c968fa8c-c22f-4712-ae01-245c663070bd")
_SKEW_US = 5 * 60 * 1_000_000  # a signature dated more than 5 minutes in the future is not accepted
_REQUIRED = ("object_ref", "object_modified", "algorithm", "key_id", "certificate", "signature", "created_by_ref", "created")
#: what a batch companion (1.2.0, ``members``) must carry; its certificate may be known to the verifier already
_BATCH_REQUIRED = ("algorithm", "key_id", "signature", "created_by_ref", "created", "merkle_root", "canonicalization")
_MAX_MEMBERS = MAX_SIGNATURE_MEMBERS


# orjson with sorted keys writes exactly RFC 8785's bytes for JSON whose numbers are all integers within
# +-2**53 (JCS writes floats the ECMAScript way) and whose keys are all in the BMP (JCS sorts keys by UTF-16
# code units, orjson by code points: they differ only beyond U+FFFF). Anything else goes through the rfc8785
# library. STIX objects are almost all strings: the fast path is about 8x quicker on ATT&CK objects.
_SAFE_INT = 2**53


def _plain(value: Any) -> bool:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_SAFE_INT < value < _SAFE_INT
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or (not key.isascii() and max(key) > "\uffff"):
                return False
            if type(item) is not str and not _plain(item):
                return False
        return True
    if kind is list:
        return all(type(item) is str or _plain(item) for item in value)
    return False


def canonical(obj: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON of ``obj`` (``rfc8785``; a fast path with the same bytes for plain STIX objects)."""
    if _plain(obj):
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
    return rfc8785.dumps(obj)


def identity_uri(identity: str) -> str:
    """The subject alternative name URI binding a signing certificate to a STIX identity."""
    return f"urn:stix:{identity}"


_NS_BYTES = _NS.bytes


def signature_id(object_id: str, version: str, signer: str) -> str:
    """The id of ``signer``'s signature on one object version (deterministic: found without a scan).

    ``uuid.uuid5(_NS, "<id>|<version>|<signer>")`` (RFC 4122 name-based, SHA-1), computed directly: it is
    computed for every version a node relays or receives."""
    raw = bytearray(hashlib.sha1(_NS_BYTES + f"{object_id}|{version}|{signer}".encode()).digest()[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{SIGNATURE_TYPE}--{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def is_signature(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("type") == SIGNATURE_TYPE


def _payload(sig: dict, obj: dict) -> bytes:
    """What a per-version signature (the format before batches: no ``merkle_root``) signs."""
    body = {k: v for k, v in sig.items() if k != "signature"}
    body["signed_object"] = obj
    return canonical(body)


#: versions per Merkle tree: a path of at most 7 hashes (~340 bytes per companion) for 32 Ed25519 operations per
#: 4,000 versions (a tree of 2,000 would need 11 hashes per companion for 2)
TREE_LEAVES = 128

#: the batch statement: what the one Ed25519 signature of a batch covers (besides the Merkle root)
_STATEMENT = ("type", "created", "created_by_ref", "key_id", "algorithm", "canonicalization", "merkle_root")
_LEAF, _NODE = b"\x00", b"\x01"


def _statement(sig: dict) -> bytes:
    return canonical({k: sig[k] for k in _STATEMENT})


def _leaf(obj: dict, derived_from: Any = None) -> bytes:
    """The Merkle leaf of one signed version (its companion's per-version fields and the object itself)."""
    body: dict[str, Any] = {"object_ref": obj.get("id"), "object_modified": object_version(obj), "signed_object": obj}
    if derived_from is not None:
        body["derived_from"] = derived_from
    return hashlib.sha256(_LEAF + canonical(body)).digest()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def merkle_tree(leaves: Sequence[bytes]) -> tuple[bytes, list[list[str]]]:
    """The root over ``leaves`` and each leaf's path (sibling hashes, base64, prefixed ``L``/``R`` by the sibling's side)."""
    if not leaves:
        raise ValueError("no leaves")
    paths: list[list[str]] = [[] for _ in leaves]
    level = list(leaves)
    members: list[list[int]] = [[i] for i in range(len(leaves))]  # the leaves under each node of the level
    while len(level) > 1:
        nxt, nxt_members = [], []
        for i in range(0, len(level) - 1, 2):
            left, right = level[i], level[i + 1]
            lb, rb = _b64(left), _b64(right)
            for leaf in members[i]:
                paths[leaf].append("R" + rb)
            for leaf in members[i + 1]:
                paths[leaf].append("L" + lb)
            nxt.append(hashlib.sha256(_NODE + left + right).digest())
            nxt_members.append(members[i] + members[i + 1])
        if len(level) % 2:
            nxt.append(level[-1])
            nxt_members.append(members[-1])
        level, members = nxt, nxt_members
    return level[0], paths


def merkle_root(leaves: Sequence[bytes]) -> bytes:
    """The root over ``leaves`` (the same tree as ``merkle_tree``, without the paths)."""
    if not leaves:
        raise ValueError("no leaves")
    level, sha = list(leaves), hashlib.sha256
    while len(level) > 1:
        nxt = [sha(_NODE + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def batch_id(root: str, signer: str, created: str) -> str:
    """The id of a batch companion (1.2.0): name-based on its Merkle root, signer and time."""
    return f"{SIGNATURE_TYPE}--{uuid.uuid5(_NS, f'batch|{root}|{signer}|{created}')}"


def covered(sig: Any) -> list[str]:
    """The member keys (``signed_member``) of the versions a signature object covers: a batch companion's ``members``,
    a per-version one's ``object_ref``/``object_modified``."""
    if not is_signature(sig):
        return []
    if "members" in sig:
        return signature_members(sig)
    ref, mod = sig.get("object_ref"), sig.get("object_modified")
    return [signed_member(ref, mod)] if isinstance(ref, str) and isinstance(mod, str) else []


def member_of(obj: dict) -> str | None:
    """The member key of an object's version (``None``: no version)."""
    version = object_version(obj)
    oid = obj.get("id")
    return signed_member(oid, version) if version is not None and isinstance(oid, str) else None


def _fold(leaf: bytes, path: Any) -> bytes | None:
    """The root that ``path`` leads to from ``leaf``; ``None`` if the path is malformed."""
    if not isinstance(path, list) or len(path) > 64:
        return None
    node, sha = leaf, hashlib.sha256
    for step in path:
        if type(step) is not str or len(step) != 45:
            return None
        try:
            sibling = binascii.a2b_base64(step[1:], strict_mode=True)
        except (ValueError, binascii.Error):
            return None
        side = step[0]
        if side == "L":
            node = sha(_NODE + sibling + node).digest()
        elif side == "R":
            node = sha(_NODE + node + sibling).digest()
        else:
            return None
    return node


def fingerprint(cert: x509.Certificate) -> str:
    return "sha256:" + hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def cert_identity(cert: x509.Certificate) -> str | None:
    """The STIX identity a signing certificate speaks for (its ``urn:stix:`` URI), or ``None``."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("urn:stix:identity--"):
            return uri[len("urn:stix:"):]
    return None


class NodeSigner:
    """A node's signing key and certificate.  ``signer``: the node's STIX identity; ``key_id``: its certificate's fingerprint."""

    def __init__(self, key: Ed25519PrivateKey, cert: x509.Certificate, signer: str) -> None:
        self._key = key
        self.cert = cert
        self.signer = signer
        self.key_id = fingerprint(cert)
        self.certificate = base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")
        self._public = key.public_key()

    def sign(self, data: bytes) -> bytes:
        """An Ed25519 signature over ``data``."""
        return self._key.sign(data)

    def verify(self, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is this key's over ``data``."""
        try:
            self._public.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def sign_object(self, obj: dict, *, derived_from: dict | None = None, created: str | None = None) -> dict:
        """The ``x-cti-signature`` object signing exactly ``obj`` (``derived_from``: the source version of a redacted copy)."""
        if object_version(obj) is None:
            raise ValueError(f"{obj.get('id')}: an object without created/modified has no version to sign")
        return self.sign_batch([(obj, derived_from)], created=created, strict=True)[0]

    def sign_together(
        self, items: Sequence[tuple[dict, dict | None]], *, created: str | None = None, leaves: dict[int, tuple[dict, bytes]] | None = None,
    ) -> list[dict]:
        """Batch companions (extension 1.2.0): one ``x-cti-signature`` per ``TREE_LEAVES`` ``(object, derived_from)``,
        each one Ed25519 signature over a Merkle root and listing every member's key and leaf (what releases write).

        An object without a version, or that RFC 8785 cannot canonicalise, is left unsigned.  ``leaves``: leaves
        already computed for these very objects (by ``id``, with the object; e.g. the same shared object of one
        release batch signed for each recipient), filled in here; the objects must not change meanwhile.
        """
        stamp = created or format_timestamp(_now_us())
        members: list[dict] = []
        tree: list[bytes] = []
        memo = leaves if leaves is not None else {}
        for obj, derived_from in items:
            version = object_version(obj)
            if version is None or not isinstance(obj.get("id"), str):
                continue
            derived = {"id": derived_from["id"], "modified": derived_from["modified"]} if derived_from is not None else None
            hit = memo.get(id(obj)) if derived is None else None
            if hit is not None and hit[0] is obj:
                leaf = hit[1]
            else:
                try:
                    leaf = _leaf(obj, derived)
                except (ValueError, TypeError, rfc8785.CanonicalizationError):
                    continue
                if derived is None:
                    memo[id(obj)] = (obj, leaf)
            entry: dict[str, Any] = {"member": signed_member(obj["id"], version), "leaf": _b64(leaf)}
            if derived == {"id": obj["id"], "modified": version}:
                entry["derived_from_same"] = True  # a redacted copy of the same version: no id in the clear
            elif derived is not None:
                entry["derived_from"] = derived
            members.append(entry)
            tree.append(leaf)
        out: list[dict] = []
        for at in range(0, len(members), TREE_LEAVES):
            root = _b64(merkle_root(tree[at:at + TREE_LEAVES]))
            sig: dict[str, Any] = {
                "type": SIGNATURE_TYPE, "spec_version": "2.1", "id": batch_id(root, self.signer, stamp),
                "created": stamp, "modified": stamp, "created_by_ref": self.signer,
                "algorithm": ALGORITHM, "canonicalization": CANONICALIZATION, "key_id": self.key_id, "certificate": self.certificate,
                "merkle_root": root, "members": members[at:at + TREE_LEAVES],
                "extensions": {SIGNATURE_EXTENSION_ID: {"extension_type": "new-sdo"}},
            }
            sig["signature"] = _b64(self.sign(_statement(sig)))
            out.append(sig)
        return out

    def sign_batch(
        self, items: Sequence[tuple[dict, dict | None]], *, created: str | None = None, strict: bool = False,
    ) -> list[dict]:
        """One ``x-cti-signature`` companion per ``(object, derived_from)``, all under one Ed25519 signature (a Merkle root):
        the per-version form of extension 1.1.0, still valid (``sign_together`` writes the batch form).

        An object without a version, or that RFC 8785 cannot canonicalise (e.g. an integer beyond 2**53), is left
        unsigned (``strict``: ``ValueError`` instead).
        """
        stamp = created or format_timestamp(_now_us())
        sigs: list[dict] = []
        leaves: list[bytes] = []
        for obj, derived_from in items:
            version = object_version(obj)
            try:
                if version is None:
                    raise ValueError(f"{obj.get('id')}: an object without created/modified has no version to sign")
                derived = {"id": derived_from["id"], "modified": derived_from["modified"]} if derived_from is not None else None
                leaves.append(_leaf(obj, derived))
            except (ValueError, TypeError, rfc8785.CanonicalizationError):
                if strict:
                    raise
                continue
            sig: dict[str, Any] = {
                "type": SIGNATURE_TYPE, "spec_version": "2.1", "id": signature_id(obj["id"], version, self.signer),
                "created": stamp, "modified": stamp, "created_by_ref": self.signer,
                "object_ref": obj["id"], "object_modified": version,
                "algorithm": ALGORITHM, "canonicalization": CANONICALIZATION, "key_id": self.key_id, "certificate": self.certificate,
                "extensions": {SIGNATURE_EXTENSION_ID: {"extension_type": "new-sdo"}},
            }
            if derived is not None:
                sig["derived_from"] = derived
            sigs.append(sig)
        if not sigs:
            return []
        for at in range(0, len(sigs), TREE_LEAVES):  # one tree (one Ed25519 signature) per TREE_LEAVES versions
            root, paths = merkle_tree(leaves[at:at + TREE_LEAVES])
            head = dict(sigs[at], merkle_root=_b64(root))
            signature = _b64(self.sign(_statement(head)))
            for sig, path in zip(sigs[at:at + TREE_LEAVES], paths, strict=True):
                sig["merkle_root"] = head["merkle_root"]
                sig["merkle_path"] = path
                sig["signature"] = signature
        return sigs


def _now_us() -> int:
    return time.time_ns() // 1000


# -- verification ------------------------------------------------------------------------

_CHANGED = "the signature does not match the object (changed in transit?)"


@dataclass(frozen=True)
class _KeyCheck:
    cert: x509.Certificate | None
    public: Ed25519PublicKey | None
    problem: str | None
    identity: str | None = None


class Verifier:
    """Checks signatures against trust anchors (the partners' CAs) and their revocation lists.  Caches per key id."""

    def __init__(
        self, anchors: Sequence[x509.Certificate], crls: Sequence[x509.CertificateRevocationList] = (),
        certificates: Iterable[x509.Certificate] = (),
    ) -> None:
        if not anchors:
            raise ConfigError("no trust anchor: give the CA certificate(s) that issue the signing certificates")
        self.anchors = list(anchors)
        self.crls = [c for c in crls if any(_crl_signed_by(c, a) for a in self.anchors)]
        self._keys: dict[str, _KeyCheck] = {}
        #: signing certificates known beforehand (key id -> base64 DER): a companion need not carry its certificate;
        #: each is still checked against the anchors, like one that travels
        self._known: dict[str, str] = {}
        for cert in certificates:
            der = cert.public_bytes(serialization.Encoding.DER)
            self._known["sha256:" + hashlib.sha256(der).hexdigest()] = _b64(der)
        #: batch statements already checked: (statement, signature) -> problem or None (one Ed25519 verify per batch)
        self._statements: dict[tuple[Any, ...], str | None] = {}
        #: batch companions' member lists already checked (their root): (root, length) -> [(a copy of the list, _Tree)]
        self._trees: dict[tuple[Any, int], list[tuple[list, _Tree]]] = {}

    @classmethod
    def from_files(cls, ca_file: Path | str, crl_files: Iterable[Path | str] = (), cert_files: Iterable[Path | str] = ()) -> Verifier:
        """Trust anchors from a PEM bundle; CRLs (PEM or DER) that a trusted CA signed.  Signing certificates in the bundle
        or in ``cert_files`` (PEM) are known beforehand (a companion without its certificate verifies with them)."""
        try:
            anchors = x509.load_pem_x509_certificates(Path(ca_file).read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read CA certificates from {ca_file}: {getattr(exc, 'strerror', None) or exc}") from None
        crls = []
        for path in crl_files:
            try:
                data = Path(path).read_bytes()
                crls.append(x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data))
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the revocation list {path}: {getattr(exc, 'strerror', None) or exc}") from None
        known = list(anchors)
        for path in cert_files:
            try:
                known += x509.load_pem_x509_certificates(Path(path).read_bytes())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read the signing certificate {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return cls(anchors, crls, known)

    def _key(self, sig: dict) -> _KeyCheck:
        key_id = sig.get("key_id")
        if not isinstance(key_id, str):
            return _KeyCheck(None, None, "no key_id")
        found = self._keys.get(key_id)
        if found is None:
            b64 = sig.get("certificate")
            if b64 is None:
                b64 = self._known.get(key_id)
                if b64 is None:  # not cached: a later companion may carry the certificate
                    return _KeyCheck(None, None, f"no certificate for {key_id} (none in the signature, none known: --ca-file)")
            found, settled = self._load_key(key_id, b64)
            if settled and len(self._keys) < 10_000:  # only what the key id itself decides (no poisoning by a wrong certificate)
                self._keys[key_id] = found
        return found

    def _load_key(self, key_id: str, b64: Any) -> tuple[_KeyCheck, bool]:
        """The key check of a certificate, and whether it is the certificate of ``key_id`` (then the check holds for the key id)."""
        try:
            der = base64.b64decode(b64, validate=True)
            cert = x509.load_der_x509_certificate(der)
        except (TypeError, ValueError):
            return _KeyCheck(None, None, "the certificate is not a base64 DER X.509 certificate"), False
        if "sha256:" + hashlib.sha256(der).hexdigest() != key_id:
            return _KeyCheck(None, None, "key_id is not the certificate's SHA-256 fingerprint"), False
        return self._cert_check(cert), True

    def _cert_check(self, cert: x509.Certificate) -> _KeyCheck:
        issuer = next((a for a in self.anchors if _issued_by(cert, a)), None)
        if issuer is None:
            return _KeyCheck(None, None, "the signing certificate is not issued by a trusted CA (--ca-file)")
        try:
            usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
            ok_usage = usage.digital_signature
        except x509.ExtensionNotFound:
            ok_usage = False
        if not ok_usage:
            return _KeyCheck(None, None, "the certificate does not allow digital signatures (keyUsage)")
        public = cert.public_key()
        if not isinstance(public, Ed25519PublicKey):
            return _KeyCheck(None, None, "the signing key is not an Ed25519 key")
        return _KeyCheck(cert, public, None, cert_identity(cert))

    def check(self, obj: dict, sig: dict) -> SignatureState:
        """Whether ``sig`` is a valid signature of exactly ``obj``."""
        if "members" in sig:
            return self._check_member(obj, sig)
        missing = [k for k in _REQUIRED if not isinstance(sig.get(k), str)]
        if missing:
            return SignatureState("invalid", None, f"signature {sig.get('id')} lacks {', '.join(missing)}")
        signer, derived = sig["created_by_ref"], sig.get("derived_from")
        derived_from = derived if isinstance(derived, dict) else None
        if sig.get("algorithm") != ALGORITHM:
            return SignatureState("invalid", signer, f"unsupported algorithm {sig.get('algorithm')!r}", derived_from)
        if sig["object_ref"] != obj.get("id") or sig["object_modified"] != object_version(obj):
            return SignatureState("invalid", signer, "the signature names another object version", derived_from)
        key = self._key(sig)
        if key.problem is not None:
            return SignatureState("invalid", signer, key.problem, derived_from)
        if key.identity != signer:
            return SignatureState("invalid", signer, f"the signing certificate is {key.identity or 'no identity'}'s, not {signer}'s", derived_from)
        if "merkle_root" in sig:
            problem = self._batch(obj, sig, key, derived)
            if problem is not None:
                return SignatureState("invalid", signer, problem, derived_from)
            return SignatureState("valid", signer, "", derived_from)
        problem = self._dated(sig, key)
        if problem is not None:
            return SignatureState("invalid", signer, problem, derived_from)
        try:  # a per-version signature (the format before batches)
            raw = base64.b64decode(sig["signature"], validate=True)
            key.public.verify(raw, _payload(sig, obj))  # type: ignore[union-attr]
        except (ValueError, TypeError, InvalidSignature, rfc8785.CanonicalizationError):
            return SignatureState("invalid", signer, _CHANGED, derived_from)
        return SignatureState("valid", signer, "", derived_from)

    def _dated(self, sig: dict, key: _KeyCheck) -> str | None:
        """Why the signature's ``created`` cannot be its key's (outside the certificate's validity, after its revocation)."""
        return _when(sig["created"], key.cert) or self._revoked(key.cert, sig["created"])  # type: ignore[arg-type]

    def _check_member(self, obj: dict, sig: dict, within: Pass | None = None) -> SignatureState:
        """A batch companion (1.2.0): ``obj``'s member entry, its leaf, the root over every listed leaf, the statement."""
        head = within.head(sig) if within is not None else self._head(sig)
        if isinstance(head, SignatureState):
            return head
        tree, signer, problem = head
        version = object_version(obj)
        if version is None or not isinstance(obj.get("id"), str):
            return SignatureState("invalid", signer, "the object has no version to sign")
        entries = tree.members.get(signed_member(obj["id"], version))
        if not entries:
            return SignatureState("invalid", signer, "the signature names another object version")
        same = {"id": obj["id"], "modified": version}
        try:
            found = next((d for leaf, d in ((leaf, same if d is _SAME else d) for leaf, d in entries) if _leaf(obj, d) == leaf), _MISSING)
        except (ValueError, TypeError, rfc8785.CanonicalizationError):
            found = _MISSING
        if found is _MISSING:
            return SignatureState("invalid", signer, _CHANGED, same if entries[0][1] is _SAME else entries[0][1])
        if problem is not None:
            return SignatureState("invalid", signer, problem, found)
        return SignatureState("valid", signer, "", found)

    def _head(self, sig: dict) -> SignatureState | tuple[_Tree, str, str | None]:
        """What a batch companion says whatever the member: an invalid state if malformed, else its checked member
        entries, its signer and why its key or statement is not valid (``None``: valid)."""
        missing = [k for k in _BATCH_REQUIRED if not isinstance(sig.get(k), str)]
        if missing or sig.get("type") != SIGNATURE_TYPE:
            return SignatureState("invalid", sig.get("created_by_ref") if not missing else None,
                                  f"signature {sig.get('id')} lacks {', '.join(missing) or 'its type'}")
        signer = sig["created_by_ref"]
        if sig["algorithm"] != ALGORITHM:
            return SignatureState("invalid", signer, f"unsupported algorithm {sig.get('algorithm')!r}")
        if sig["canonicalization"] != CANONICALIZATION or sig.get("modified") != sig["created"]:
            return SignatureState("invalid", signer, "malformed batch signature (canonicalization, modified)")
        tree = self._tree(sig)
        if tree.problem is not None:
            return SignatureState("invalid", signer, tree.problem)
        key = self._key(sig)
        if key.problem is not None:
            return tree, signer, key.problem
        if key.identity != signer:
            return tree, signer, f"the signing certificate is {key.identity or 'no identity'}'s, not {signer}'s"
        return tree, signer, self._statement_problem(sig, key)

    def session(self) -> Pass:
        """Checks of one batch (an envelope, a page, a bundle): each batch companion's member list, key and statement
        are looked at once for all its members.  The signature objects must not change while the pass is in use."""
        return Pass(self)

    def _tree(self, sig: dict) -> _Tree:
        """The member entries of a batch companion by member key, once its leaves are checked to lead to its root."""
        members = sig.get("members")
        if not isinstance(members, list) or not 0 < len(members) <= _MAX_MEMBERS:
            return _Tree("malformed members", {})
        memo = (sig["merkle_root"], len(members))
        seen = self._trees.get(memo, [])
        for copy_, tree in seen:  # a cached tree only for an equal member list (a C-level comparison, no hashing)
            if copy_ == members:
                return tree
        try:
            copy_ = orjson.loads(orjson.dumps(members))  # a private copy: the caller's list may change afterwards
        except (TypeError, orjson.JSONEncodeError):
            return _Tree("malformed members", {})
        if copy_ != members:  # not plain JSON (e.g. NaN, which orjson writes as null): not a member list
            return _Tree("malformed members", {})
        found = _build_tree(sig["merkle_root"], copy_)
        if len(self._trees) >= 10_000:
            self._trees.clear()
        self._trees[memo] = [*seen[-3:], (copy_, found)]  # a few lists per root at most (bogus variants cannot grow it)
        return found

    def _statement_problem(self, sig: dict, key: _KeyCheck) -> str | None:
        """Why the batch statement (root, signer, key, time) is not validly signed; checked once per batch."""
        memo = (*(sig.get(k) for k in _STATEMENT), sig["signature"])  # the statement and its signature
        if memo in self._statements:
            return self._statements[memo]
        problem = self._dated(sig, key)
        if problem is None:
            try:
                key.public.verify(base64.b64decode(sig["signature"], validate=True), _statement(sig))  # type: ignore[union-attr]
            except (ValueError, TypeError, InvalidSignature, rfc8785.CanonicalizationError):
                problem = _CHANGED
        if len(self._statements) >= 50_000:
            self._statements.clear()
        self._statements[memo] = problem
        return problem

    def _batch(self, obj: dict, sig: dict, key: _KeyCheck, derived: Any) -> str | None:
        """Why a batch-format companion does not sign ``obj``: its leaf and path must lead to its root, and the batch
        statement (root, signer, key, time) must be validly signed; that last part is checked once per batch."""
        if sig.get("type") != SIGNATURE_TYPE or not isinstance(sig.get("merkle_root"), str) or sig.get("canonicalization") != CANONICALIZATION:
            return "malformed batch signature (type, merkle_root, canonicalization)"
        if sig.get("modified") != sig["created"]:
            return "the signature object's modified is not its created"
        try:
            leaf = _leaf(obj, derived)
        except (ValueError, TypeError, rfc8785.CanonicalizationError):
            return _CHANGED
        root = _fold(leaf, sig.get("merkle_path"))
        if root is None:
            return "malformed merkle_path"
        if _b64(root) != sig["merkle_root"]:
            return _CHANGED
        return self._statement_problem(sig, key)

    def _revoked(self, cert: x509.Certificate, created: str) -> str | None:
        for crl in self.crls:
            if crl.issuer != cert.issuer:
                continue
            entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
            if entry is not None and parse_timestamp(created) >= _us(entry.revocation_date_utc):
                return f"the signing key was revoked on {format_timestamp(_us(entry.revocation_date_utc))}"
        return None

    def judge(self, obj: dict, sigs: Sequence[dict], within: Pass | None = None) -> SignatureState:
        """The state of ``obj`` given the signatures found for its version: any invalid one makes it invalid.
        ``within``: a ``session()`` for the objects of one batch."""
        if not sigs:
            return SignatureState("unsigned")
        states = [self._check_member(obj, s, within) if "members" in s else self.check(obj, s) for s in sigs]
        bad = next((s for s in states if s.status != "valid"), None)
        if bad is not None:
            return bad
        creator = obj.get("created_by_ref")
        return next((s for s in states if s.signer == creator), states[0])


_MISSING: Any = object()
_SAME: Any = object()  # a member entry's derived_from_same: derived from the member's own id and version


class Pass:
    """``Verifier.session()``: per batch companion (held here, so its ``id`` is never another's) what ``_head`` found."""

    def __init__(self, verifier: Verifier) -> None:
        self._verifier = verifier
        self._heads: dict[int, tuple[dict, Any]] = {}

    def head(self, sig: dict) -> Any:
        hit = self._heads.get(id(sig))
        if hit is not None and hit[0] is sig:
            return hit[1]
        found = self._verifier._head(sig)
        self._heads[id(sig)] = (sig, found)
        return found


@dataclass(frozen=True)
class _Tree:
    problem: str | None
    members: dict[str, list[tuple[bytes, Any]]]  # member key -> [(leaf, derived_from: a dict, None or _SAME)]


def _build_tree(root: Any, members: list) -> _Tree:
    """A batch companion's member entries, checked: well-formed, and their leaves lead to ``root``."""
    out: dict[str, list[tuple[bytes, Any]]] = {}
    leaves: list[bytes] = []
    for m in members:
        if not isinstance(m, dict) or not isinstance(m.get("member"), str) or len(m["member"]) != 32 or not isinstance(m.get("leaf"), str):
            return _Tree("malformed members", {})
        derived = m.get("derived_from")
        if derived is not None and not (isinstance(derived, dict) and set(derived) == {"id", "modified"}
                                        and all(isinstance(v, str) for v in derived.values())):
            return _Tree("malformed derived_from", {})
        if "derived_from_same" in m:
            if m["derived_from_same"] is not True or derived is not None:
                return _Tree("malformed derived_from", {})
            derived = _SAME
        if set(m) - {"member", "leaf", "derived_from", "derived_from_same"}:
            return _Tree("malformed members", {})
        try:
            leaf = binascii.a2b_base64(m["leaf"], strict_mode=True)
        except (ValueError, binascii.Error):
            return _Tree("malformed members", {})
        if len(leaf) != 32:
            return _Tree("malformed members", {})
        leaves.append(leaf)
        out.setdefault(m["member"], []).append((leaf, derived))
    if _b64(merkle_root(leaves)) != root:
        return _Tree(_CHANGED, {})
    return _Tree(None, out)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def _us(when: dt.datetime) -> int:
    return int(when.timestamp() * 1_000_000)


def _when(created: str, cert: x509.Certificate) -> str | None:
    """Why a signature made at ``created`` cannot be the certificate's (outside its validity, or in the future)."""
    try:
        at = parse_timestamp(created)
    except ValueError:
        return "the signature's created is not a timestamp"
    if at > _now_us() + _SKEW_US:
        return "the signature is dated in the future"
    if not _us(cert.not_valid_before_utc) <= at <= _us(cert.not_valid_after_utc):
        return (f"made at {created}, outside the signing certificate's validity "
                f"({format_timestamp(_us(cert.not_valid_before_utc))} to {format_timestamp(_us(cert.not_valid_after_utc))})")
    return None


def signature_index(objs: Iterable[dict]) -> dict[str, list[dict]]:
    """The signature objects among ``objs`` by the member key (``signed_member``) of each version they cover (latest
    version of each signature object)."""
    latest: dict[str, dict] = {}
    for o in objs:
        if is_signature(o) and isinstance(o.get("id"), str):
            prior = latest.get(o["id"])
            if prior is None or str(o.get("modified", "")) > str(prior.get("modified", "")):
                latest[o["id"]] = o
    out: dict[str, list[dict]] = {}
    for o in latest.values():
        for key in dict.fromkeys(covered(o)):
            out.setdefault(key, []).append(o)
    return out


# -- the node's keys, from its configuration -----------------------------------------------------


def _config(cfg: Any) -> Any:
    return getattr(cfg, "config", cfg)  # a LoadedNode or a NodeConfig


def signing_dir(cfg: Any) -> Path | None:
    """The PKI folder of the node's signing key and trust anchors (``CTI_EXCHANGE_PKI_DIR``, else ``signing.pki_dir``);
    ``None`` when signing is off (``signing.enabled: false`` or ``CTI_EXCHANGE_SIGNING=off``) or not configured."""
    c = _config(cfg)
    if os.environ.get(SWITCH_ENV, "").strip().lower() in ("off", "0", "false", "no") or not c.signing.enabled:
        return None
    where = os.environ.get(PKI_ENV) or c.signing.pki_dir
    return Path(where) if where else None


_signers: dict[tuple, NodeSigner] = {}
_verifiers: dict[tuple, Verifier] = {}


def _stamp(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (str(path), None)
    return (str(path), st.st_mtime_ns, st.st_size)


def load_node_signer(cfg: Any) -> NodeSigner | None:
    """The node's signer from its configuration (a ``NodeConfig`` or ``LoadedNode``); ``None`` if signing is off.

    ``ConfigError`` (one line) if the key or certificate is missing, unreadable, not Ed25519, or not bound to
    the node's identity.
    """
    c = _config(cfg)
    where = signing_dir(c)
    if where is None:
        return None
    key_path, cert_path = where / f"{c.node}-signing.key", where / f"{c.node}-signing.crt"
    memo = (_stamp(key_path), _stamp(cert_path), c.identity)
    if memo in _signers:
        return _signers[memo]
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"node {c.node!r}: cannot read its signing key/certificate in {where} "
                          f"({getattr(exc, 'strerror', None) or exc}); run 'cti-exchange pki init' or turn signing off") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{key_path}: not an Ed25519 key")
    if key.public_key().public_bytes_raw() != cert.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw):
        raise ConfigError(f"{cert_path} does not belong to {key_path}")
    if cert_identity(cert) != c.identity:
        raise ConfigError(f"{cert_path} speaks for {cert_identity(cert)}, not for node {c.node!r} ({c.identity})")
    signer = NodeSigner(key, cert, c.identity)
    _signers[memo] = signer
    return signer


def node_verifier(cfg: Any) -> Verifier | None:
    """The node's verifier: its PKI folder's ``ca.crt``, ``ca.crl`` (if present) and signing certificates; ``None`` if signing is off."""
    where = signing_dir(cfg)
    if where is None:
        return None
    ca, crl = where / "ca.crt", where / "ca.crl"
    certs = sorted(where.glob("*-signing.crt"))  # the signing certificates the folder holds (a companion may omit its own)
    memo = (_stamp(ca), _stamp(crl), *(_stamp(c) for c in certs))
    if memo not in _verifiers:
        _verifiers[memo] = Verifier.from_files(ca, [crl] if crl.is_file() else [], certs)
    return _verifiers[memo]


def signing_parties(cfg: Any) -> frozenset[str]:
    """The identities whose nodes sign what they originate: every partner with a node (not read-only), when signing is on."""
    c = _config(cfg)
    if signing_dir(c) is None:
        return frozenset()
    return frozenset(p.identity for p in c.partners.values() if not p.read_only)


def known_signers(cfg: Any) -> list[str]:
    """Every identity whose signature this node may find in its collections: itself and its partners."""
    c = _config(cfg)
    return list(dict.fromkeys([c.identity, *(p.identity for p in c.partners.values())]))


# -- inbound: the signature state of each object of a batch ------------------------------------------------


Lookup = Callable[[list[str]], list[dict]]


def _unsigned_here(objs: Sequence[dict], index: dict[str, list[dict]]) -> dict[str, tuple[dict, str]]:
    """The versions of ``objs`` that no signature of ``objs`` covers: member key -> (object, version)."""
    out: dict[str, tuple[dict, str]] = {}
    for o in objs:
        if not isinstance(o, dict) or is_signature(o) or not isinstance(o.get("id"), str):
            continue
        version = object_version(o)
        if version is None:
            continue
        key = signed_member(o["id"], version)
        if key not in index:  # else signed in this batch (a signature is sent before what it signs): no lookup
            out[key] = (o, version)
    return out


def batch_states(
    verifier: Verifier | None, objs: Sequence[dict], stored: Lookup, signers: Sequence[str], covering: Lookup | None = None,
) -> Callable[[dict], SignatureState]:
    """A function giving each object's signature state, from the signatures in ``objs`` and those already stored.

    ``stored(ids)``: stored per-version signature objects by id (e.g. in the inbox, arrived in an earlier envelope);
    ``covering(member keys)``: stored batch companions listing any of those members (``Store.signatures_covering``);
    ``signers``: whose signatures to look for besides the object's creator.  Without a verifier
    (signing off here) every object counts as unsigned.
    """
    if verifier is None:
        return lambda _obj: SignatureState("unsigned")
    index = signature_index(objs)
    keys = _unsigned_here(objs, index)

    def add(found: Iterable[dict]) -> None:
        for sig in found:
            for key in covered(sig):
                if key in keys and sig.get("id") not in {x.get("id") for x in index.get(key, ())}:
                    index.setdefault(key, []).append(sig)

    if covering is not None and keys:  # batch companions first: then per-version ones only for what is still unsigned
        add(covering(list(keys)))
    wanted = [signature_id(o["id"], version, who) for key, (o, version) in keys.items() if key not in index
              for who in dict.fromkeys([*signers, o.get("created_by_ref")]) if isinstance(who, str)]
    if wanted:
        add(stored(wanted))
    within = verifier.session()

    def state(obj: dict) -> SignatureState:
        key = member_of(obj)
        if key is None:
            return SignatureState("unsigned")
        return verifier.judge(obj, index.get(key, []), within)

    return state


def extension_definition() -> dict:
    """The ``x-cti-signature`` extension definition (travels with the first signatures to each recipient)."""
    return SIGNATURE_EXTENSION_DEFINITION


# -- a report for anyone holding the partners' CA certificates (``cti-exchange verify``) --------------------


def verify_report(objs: Sequence[dict], verifier: Verifier) -> dict:
    """Each object version's origin signature: ``{"objects": [{id, modified, signer, status, derived_from}], valid, invalid, unsigned}``.

    Signature objects and the signature extension definition are what is checked, not reported.
    """
    index = signature_index(objs)
    within = verifier.session()
    rows: list[dict] = []
    reasons: list[str] = []
    counts = {"valid": 0, "invalid": 0, "unsigned": 0}
    for obj in objs:
        if not isinstance(obj, dict) or is_signature(obj) or obj.get("id") == SIGNATURE_EXTENSION_ID:
            continue
        version = object_version(obj)
        key = member_of(obj)
        state = verifier.judge(obj, index.get(key, []), within) if key is not None else SignatureState("unsigned")
        counts[state.status] += 1
        rows.append({"id": obj.get("id"), "modified": version, "signer": state.signer, "status": state.status,
                     "derived_from": state.derived_from})
        reasons.append(state.reason)
    return {"objects": rows, **counts, "_reasons": reasons}
