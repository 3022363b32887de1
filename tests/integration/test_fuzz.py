"""Fuzzing a running node with generated malformed and adversarial requests (hypothesis).

One node process per storage backend (module scope), every collection seeded
with objects whose names carry a per-run marker.  Each example sends one
request (method, path with odd ids, query string with odd filters and ``next``
tokens, headers, credentials, body) and checks:

* the answer is not a 5xx, and every 4xx carries a TAXII error body (s3.6.1);
* the server process is still alive;
* a rejected request (anything but a 2xx to POST or DELETE) left storage as it
  was: the writable collections' rows and the status resources;
* no answer carries the marker of a collection the asking account may not read
  (or of another account's status resource); without valid credentials, none.

Bounded for the test suite (300 examples per backend, derandomized so CI is
reproducible); ``bench/fuzz_long.py --examples N`` (or
``CTI_EXCHANGE_FUZZ_EXAMPLES=N``) runs longer, randomized, and prints counts.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import string
import urllib.parse
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exchange.node.ops import open_node
from exchange.storage.store import Store
from tests.conftest import BACKENDS, PASSWORDS, NodeProcess, fresh_database, node_args, provision
from tests.integration.hostile import TAXII, fingerprint, node_dir_with

EXAMPLES = int(os.environ.get("CTI_EXCHANGE_FUZZ_EXAMPLES", "300"))
LONG_RUN = "CTI_EXCHANGE_FUZZ_EXAMPLES" in os.environ
REPORT = os.environ.get("CTI_EXCHANGE_FUZZ_REPORT")  # a JSON file for the counts (bench/fuzz_long.py)
RUN = uuid.uuid4().hex[:12]
TLP_RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
ACCOUNTS = ("analyst", "rok", "jp")
STATUS_OWNERS = ("analyst", "rok")


def _marker(owner: str) -> str:
    return f"LEAKMARK-{RUN}-{owner}-"


def _seed_object(owner: str, i: int) -> dict:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": f"indicator--{uuid.uuid4()}",
        "created": "2024-01-01T00:00:00.000Z",
        "modified": "2024-01-01T00:00:00.000Z",
        "name": f"{_marker(owner)}{i}",
        "pattern": f"[ipv4-addr:value = '203.0.113.{i}']",
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
        "object_marking_refs": [TLP_RED],  # never released anywhere: stays where it is seeded
    }


class Fuzzed:
    """The running node and what the checks need to know about it."""

    def __init__(self, proc: NodeProcess, store: Store, grants: dict[str, frozenset[str]], collections: dict[str, str],
                 seeded_ids: list[str], status_ids: dict[str, str], writable: list[str]) -> None:
        self.proc = proc
        self.store = store
        self.port = urllib.parse.urlsplit(proc.url).port
        self.grants = grants  # account -> readable collection ids
        self.collections = collections  # alias -> id
        self.seeded_ids = seeded_ids
        self.status_ids = status_ids  # owner -> status id
        self.writable = writable
        self.tokens: list[str] = []
        self.counts: Counter = Counter()


@pytest.fixture(scope="module", params=BACKENDS)
def fuzzed(request, tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    with fresh_database(request.param, tmp) as database:
        node_dir = str(node_dir_with(tmp, auth={"max_failed_logins": 20, "failed_login_window": 30}))
        data = tmp / "data"
        provision(node_dir, data, database=database)
        opened = open_node(node_dir, data_dir=data, database=database)
        try:
            collections = {c.alias: c.id for c in opened.node.config.collections}
            seeded_ids = []
            for alias, cid in collections.items():
                objs = [_seed_object(alias, i) for i in range(3)]
                opened.store.add_objects(cid, objs)
                seeded_ids += [o["id"] for o in objs]
            status_ids = {}
            for owner in STATUS_OWNERS:
                sid = str(uuid.uuid4())
                opened.store.save_status("us", owner, {
                    "id": sid, "status": "complete", "total_count": 1, "success_count": 1, "failure_count": 0, "pending_count": 0,
                    "successes": [{"id": seeded_ids[0], "version": "2024-01-01T00:00:00.000Z", "message": f"{_marker('status-' + owner)}0"}],
                })
                status_ids[owner] = sid
            grants = {name: readable for name, _pw, _partner, readable, _writable in opened.store.accounts()}
            writes = {name: writable for name, _pw, _partner, _readable, writable in opened.store.accounts()}
            writable = sorted({cid for w in writes.values() for cid in w})
        finally:
            opened.close()
        proc = NodeProcess(node_dir, data, extra_args=(*node_args(database), "--request-timeout", "5")).start()
        store = Store.open(data_dir=data, database=database)
        f = Fuzzed(proc, store, grants, collections, seeded_ids, status_ids, writable)
        f.writes = writes  # type: ignore[attr-defined]
        for account, alias, endpoint in (("analyst", "us-intel", "objects"), ("analyst", "rok-inbox", "manifest"), ("rok", "rok-read", "objects")):
            page = requests.get(
                proc.collection_url(alias) + endpoint + "/", params={"limit": "1"}, headers={"Accept": TAXII},
                auth=(account, PASSWORDS[account]), timeout=10,
            ).json()
            f.tokens.append(page["next"])  # genuine tokens, to be replayed elsewhere and mangled
        try:
            yield f
        finally:
            proc.stop()
            store.close()
            _report(request.param, f.counts)


def _report(backend: str, counts: Counter) -> None:
    total = sum(counts.values())
    by_status = Counter()
    for (_method, status), n in counts.items():
        by_status[status] += n
    print(f"\nfuzz [{backend}]: {total} requests; by status: {dict(sorted(by_status.items()))}")
    if REPORT:
        path = Path(REPORT)
        doc = orjson.loads(path.read_bytes()) if path.exists() else {}
        doc[backend] = {"requests": total, "by_status": {str(k): v for k, v in sorted(by_status.items())},
                        "by_method_status": {f"{m} {s}": n for (m, s), n in sorted(counts.items())}}
        path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))


# -- strategies ------------------------------------------------------------------------------------

TRAVERSALS = [
    "..", "../../etc/passwd", "..%2f..%2fetc%2fpasswd", "%2e%2e", "%2e%2e%2f%2e%2e%2f", "....//....//", "..\\..\\windows",
    "%00", "\x00", "indicator--../../x", "/etc/passwd", "%252e%252e%252f", "\u202e", "NUL", "con", "~root", "%", "%zz",
    "*", "'", "' OR '1'='1", "\"; DROP TABLE objects; --", "${jndi:ldap://x}", "{{7*7}}", "\ufeff", "\U0001f4a3",
]
ODD = st.one_of(
    st.text(max_size=40),
    st.sampled_from(TRAVERSALS),
    st.text(alphabet="abcdef0123456789-", min_size=200, max_size=3000),
    st.binary(max_size=30).map(lambda b: b.decode("latin-1")),
)
STIX_ID = st.uuids().map(lambda u: f"indicator--{u}")
TIMESTAMP = st.one_of(
    st.datetimes().map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%fZ")),
    st.sampled_from(
        ["2024-02-30T00:00:00Z", "0000-01-01T00:00:00Z", "2024-01-01T25:00:00Z", "2024-01-01", "yesterday", "9999-12-31T23:59:59.999999999Z"]
    ),
)
NUMBER = st.one_of(st.integers(min_value=-(10**30), max_value=10**30).map(str), st.sampled_from(["0", "-1", "1e3", "0x10", " 5", "١٠", "NaN", ""]))


@st.composite
def secret_token(draw, fz: Fuzzed) -> str:
    token = draw(st.sampled_from(fz.tokens))
    how = draw(st.integers(0, 5))
    if how == 0:
        return token
    if how == 1:  # flip one character
        i = draw(st.integers(0, len(token) - 1))
        return token[:i] + draw(st.sampled_from("AB-_.x=")) + token[i + 1:]
    if how == 2:
        return token[: draw(st.integers(0, len(token)))]
    if how == 3:
        if "." not in token:  # an opaque token (exchange.node.cursor v2): same length and version byte, other bytes
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            forged = raw[:1] + draw(st.binary(min_size=len(raw) - 1, max_size=len(raw) - 1))
            return base64.urlsafe_b64encode(forged).decode().rstrip("=")
        body, mac = token.split(".")
        payload = draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=2, max_size=3))
        return base64.urlsafe_b64encode(orjson.dumps(payload)).decode().rstrip("=") + "." + mac
    if how == 4:
        return token + draw(ODD)
    return draw(ODD)


@st.composite
def filter_value(draw, fz: Fuzzed, key: str) -> str:
    if key == "next":
        return draw(secret_token(fz))
    choices = [ODD, NUMBER, TIMESTAMP]
    if key == "match[id]":
        choices.append(st.lists(st.one_of(st.sampled_from(fz.seeded_ids), STIX_ID, ODD), min_size=1, max_size=4).map(",".join))
    if key == "match[version]":
        choices.append(st.lists(st.one_of(st.sampled_from(["first", "last", "all"]), TIMESTAMP), min_size=1, max_size=3).map(",".join))
    if key == "match[type]":
        choices.append(st.sampled_from(["indicator", "malware,indicator", "x-custom", "INDICATOR", "in"]))
    if key == "match[spec_version]":
        choices.append(st.sampled_from(["2.0", "2.1", "2.0,2.1", "3.0"]))
    return draw(st.one_of(*choices))


SINGLE = ("match[id]", "match[type]", "match[version]", "match[spec_version]", "added_after", "limit", "next")


@st.composite
def query_string(draw, fz: Fuzzed) -> str:
    keys = st.one_of(st.sampled_from(SINGLE), ODD)
    pairs = []
    for key in draw(st.lists(keys, max_size=5)):
        pairs.append((key, draw(filter_value(fz, key))))
    if pairs and draw(st.integers(0, 3)) == 0:  # a filter given again (a 400 however it is spelt)
        key = draw(st.sampled_from([k for k, _ in pairs if k in SINGLE] or list(SINGLE)))
        pairs.insert(draw(st.integers(0, len(pairs))), (key, draw(filter_value(fz, key))))
    if not pairs:
        return ""
    if draw(st.booleans()):
        return "?" + urllib.parse.urlencode(pairs)
    # hand-made: brackets and percent signs left as they are, or brackets percent-encoded
    safe = draw(st.sampled_from(["[]%", "%"]))
    return "?" + "&".join(urllib.parse.quote(k, safe=safe) + "=" + urllib.parse.quote(v, safe="[]%,:") for k, v in pairs)


def repeated_filters(target: str) -> list[str]:
    """The filters given more than once in a request target's query (as the server splits and decodes it)."""
    query = urllib.parse.urlsplit(target).query
    seen = Counter(k for k, _ in urllib.parse.parse_qsl(query, keep_blank_values=True, errors="replace"))
    return [k for k in SINGLE if seen[k] > 1]


def mostly(usual, odd, *, odd_in: int = 4):
    """``usual`` but one time in ``odd_in``: keeps most requests deep enough to reach the backend."""
    return st.integers(0, odd_in - 1).flatmap(lambda i: odd if i == 0 else usual)


def _segment(draw, value: str) -> str:
    """Percent-encoded, or with ASCII punctuation left raw (``../``, ``%zz``, ``?``, ``#``...)."""
    return urllib.parse.quote(value, safe=draw(st.sampled_from(["", "/.", "%", string.punctuation])))


@st.composite
def path(draw, fz: Fuzzed, method: str = "GET", account: str | None = None) -> str:
    root = draw(mostly(st.just("us"), ODD, odd_in=8))
    mine = sorted((fz.writes if method in ("POST", "DELETE") else fz.grants).get(account or "", ())) or sorted(fz.collections.values())
    cid = draw(mostly(st.sampled_from(mine), st.one_of(st.sampled_from(sorted(fz.collections.values())), st.uuids().map(str), ODD)))
    oid = draw(mostly(st.one_of(st.sampled_from(fz.seeded_ids), STIX_ID), ODD, odd_in=3))
    sid = draw(mostly(st.sampled_from(sorted(fz.status_ids.values())), st.one_of(st.uuids().map(str), ODD), odd_in=3))
    r, c, o, s = (_segment(draw, v) for v in (root, cid, oid, sid))
    anywhere = st.sampled_from([
        "/taxii2/", f"/{r}/", f"/{r}/collections/", f"/{r}/collections/{c}/", f"/{r}/collections/{c}/objects/",
        f"/{r}/collections/{c}/objects/", f"/{r}/collections/{c}/objects/{o}/", f"/{r}/collections/{c}/objects/{o}/versions/",
        f"/{r}/collections/{c}/manifest/", f"/{r}/status/{s}/", "/" + _segment(draw, draw(ODD)), "/healthz", "/healthz/",
    ])
    usual = {"POST": f"/{r}/collections/{c}/objects/", "DELETE": f"/{r}/collections/{c}/objects/{o}/"}.get(method)
    template = draw(mostly(st.just(usual), anywhere) if usual else anywhere)
    return template + draw(query_string(fz))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode("utf-8", "surrogatepass")).decode()


HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, blacklist_characters="\x7f"), max_size=60)


@st.composite
def credentials(draw) -> tuple[str | None, str | None]:
    """(Authorization header or None, the account it validly authenticates or None)."""
    kind = draw(st.sampled_from(["valid"] * 12 + ["wrong", "random", "garbage", "none"]))
    if kind == "valid":
        name = draw(st.sampled_from(ACCOUNTS))
        return _basic(name, PASSWORDS[name]), name
    if kind == "wrong":  # only jp's: analyst and rok must stay usable for the rest of the run
        return _basic("jp", draw(st.text(min_size=1, max_size=30))), None
    if kind == "random":
        return _basic(draw(st.text(max_size=20).filter(lambda u: ":" not in u)), draw(st.text(max_size=20))), None
    if kind == "garbage":
        return draw(st.one_of(HEADER_TEXT, st.just("Basic"), st.just("Basic !!!"), HEADER_TEXT.map(lambda t: "Basic " + t))), None
    return None, None


# headers the server itself interprets; only values answered at once (a bare "chunked" would make
# the node wait for a body that never comes, until the request timeout)
SPECIALS = [
    ("Transfer-Encoding", v) for v in ("gzip", "foo", "identity", "compress", "chunked, gzip", "chunked, chunked", "gzip, chunked")
] + [
    ("SCRIPT_NAME", "/foo"), ("SCRIPT_NAME", "/us"), ("PATH_INFO", "/../etc"), ("X-Forwarded-Proto", "https"), ("X-Forwarded-For", "10.0.0.1"),
    ("Host", "evil.example"), ("Host", ""), ("Expect", "100-continue"), ("Expect", "foo"), ("Connection", "close"), ("Connection", "upgrade"),
    ("Upgrade", "h2c"), ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"), ("Range", "bytes=0-10"), ("If-None-Match", "*"),
]
SPECIAL_HEADER = st.sampled_from(SPECIALS)
OTHER_HEADER = st.tuples(st.from_regex(r"\A[A-Za-z][A-Za-z0-9-]{0,20}\Z"), HEADER_TEXT)

MEDIA_VARIANTS = [
    TAXII, "application/taxii+json", "application/taxii+json;version=2.0", "application/taxii+json; version=2.1", "*/*",
    "application/json", "application/stix+json;version=2.1", "", "text/html", "Application/TAXII+JSON;Version=2.1",
    "application/taxii+json;version=2.1;charset=utf-8", 'application/taxii+json;version="2.1"', 'application/taxii+json;version="2.1',
    "application/taxii+json;version=2.1;charset=latin-1", "application/xml;q=0.9, application/taxii+json;version=2.1;q=0.8",
    "application/taxii+json;q=0", "*/*;q=0", "application/*", "text/*", "application/taxii+json;version=2.1;q=2",
    "application/taxii+json;version=2.1;q=0.0001", "application/taxii+json;;;", ",,,", "application/taxii+json;version=2.1, text/plain",
    "application/taxii+json;version=2.1;q=0, */*", "application/taxii+json;version=3.0, application/taxii+json;version=2.1",
    "application/taxii+json;version=2.1;foo=bar", "application/taxii+json;version=", "application/taxii+json;=2.1", "/", "*/json",
    "application/taxii+json\t;\tversion=2.1", 'application/taxii+json;version="2\\.1"',
]


@st.composite
def media_list(draw) -> str:
    """An Accept-like list built from parts: types in any case, parameters, weights, odd separators."""
    members = []
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["application/taxii+json", "application/*", "*/*", "application/xml", "text/html", "application/json"]))
        kind = draw(st.sampled_from([kind, kind.upper(), kind.title()]))
        params = draw(st.lists(st.sampled_from(
            ["version=2.1", "version=2.0", "version=3.0", 'version="2.1"', "charset=utf-8", "charset=UTF-8", "charset=latin-1",
             "q=0", "q=0.5", "q=1", "q=1.0001", "q=abc", "level=1", ""]
        ), max_size=3))
        sep = draw(st.sampled_from([";", " ; ", ";\t"]))
        members.append(kind + "".join(sep + p for p in params))
    return draw(st.sampled_from([",", ", ", " ,  ", ",,"])).join(members)


MEDIA = st.one_of(st.sampled_from(MEDIA_VARIANTS), media_list(), HEADER_TEXT)

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=25,
)


@st.composite
def valid_object(draw) -> dict:
    return {
        "type": "indicator",
        "spec_version": "2.1",
        "id": draw(STIX_ID),
        "created": "2024-01-01T00:00:00.000Z",
        "modified": draw(st.sampled_from(["2024-01-01T00:00:00.000Z", "2024-06-01T00:00:00.000Z"])),
        "name": draw(st.text(max_size=30)),
        "pattern": "[ipv4-addr:value = '198.51.100.7']",
        "pattern_type": "stix",
        "valid_from": "2024-01-01T00:00:00Z",
    }


@st.composite
def broken_object(draw) -> object:
    obj = draw(valid_object())
    key = draw(st.one_of(st.sampled_from(sorted(obj)), st.sampled_from(["created_by_ref", "object_marking_refs", "granular_markings",
                                                                         "confidence", "labels", "external_references", "x_nest"])))
    if draw(st.booleans()):
        obj.pop(key, None)
    else:
        obj[key] = draw(JSON)
    return obj


def _json(draw, value: object) -> bytes:
    """The stdlib encoder: integers past 64 bits and NaN go out as they are (orjson refuses them)."""
    return json.dumps(value, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")


@st.composite
def body(draw) -> bytes | None:
    kind = draw(mostly(st.integers(1, 3), st.sampled_from([0, *range(4, 12)]), odd_in=2))
    if kind == 0:
        return None
    if kind in (1, 2):
        return _json(draw, {"objects": draw(st.lists(valid_object(), min_size=1, max_size=3))})
    if kind == 3:
        return _json(draw, {"objects": draw(st.lists(st.one_of(valid_object(), broken_object()), min_size=1, max_size=5))})
    if kind == 4:
        return _json(draw, draw(JSON))
    if kind == 5:
        return _json(draw, {"objects": draw(st.lists(JSON, max_size=5))})
    if kind == 6:
        return draw(st.binary(max_size=200))
    if kind == 7:  # valid JSON, then cut or spliced
        raw = orjson.dumps({"objects": [draw(valid_object())]})
        i = draw(st.integers(0, len(raw)))
        return raw[:i] + draw(st.binary(max_size=5)) + raw[i + draw(st.integers(0, 3)):]
    if kind == 8:
        depth = draw(st.integers(60, 3000))
        inner = b"[" * depth + b"]" * depth if draw(st.booleans()) else b'{"a":' * depth + b"1" + b"}" * depth
        return b'{"objects": [' + inner + b"]}"
    if kind == 9:
        return b'{"objects": [{"type": "indicator", "name": "' + draw(st.sampled_from([b"\xff", b"\xc0\xaf", b"\xed\xa0\x80", b"\\ud800"])) + b'"}]}'
    if kind == 10:
        n = draw(st.sampled_from([0, 1, 10_001, 20_000]))
        return orjson.dumps({"objects": [{"type": "x"}] * n})
    return _json(draw, {"objects": draw(JSON)}) if draw(st.booleans()) else b""


@st.composite
def fuzz_request(draw, fz: Fuzzed) -> dict:
    method = draw(mostly(
        st.sampled_from(["GET"] * 4 + ["POST"] * 3 + ["DELETE", "HEAD"]),
        st.one_of(st.sampled_from(["PUT", "PATCH", "OPTIONS", "TRACE"]), st.from_regex(r"\A[A-Z]{1,10}\Z")),
        odd_in=10,
    ))
    writers = sorted(name for name in ACCOUNTS if fz.writes.get(name))
    writer = st.sampled_from(writers).map(lambda name: (_basic(name, PASSWORDS[name]), name))
    auth, account = draw(mostly(writer, credentials()) if method in ("POST", "DELETE") else credentials())
    headers: dict[str, str] = {}
    if draw(mostly(st.just(True), st.just(False), odd_in=10)):
        headers["Accept"] = draw(mostly(st.just(TAXII), MEDIA, odd_in=6))
    if draw(mostly(st.just(True), st.just(False), odd_in=10)):
        headers["Content-Type"] = draw(mostly(st.just(TAXII), MEDIA, odd_in=6))
    if auth is not None:
        headers["Authorization"] = auth
    for name, value in draw(st.lists(st.one_of(SPECIAL_HEADER, OTHER_HEADER), max_size=3)):
        if name.lower() not in ("content-length", "transfer-encoding", "authorization", "expect", "connection") or (name, value) in SPECIALS:
            headers[name] = value
    payload = draw(body()) if method not in ("GET", "HEAD") or draw(st.integers(0, 9)) == 0 else None
    if payload is not None and draw(st.integers(0, 9)) == 0:
        # a Content-Length that lies short, or is not a number (never longer: the node would wait for the rest)
        headers["Content-Length"] = draw(st.one_of(st.integers(0, len(payload)).map(str), st.sampled_from(["abc", "-1", "1e3", " 4", "+4"])))
    return {"method": method, "path": draw(path(fz, method, account)), "headers": headers, "body": payload, "account": account}


# -- the property ------------------------------------------------------------------------------------


def _send(fz: Fuzzed, req: dict) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", fz.port, timeout=30)
    try:
        conn.putrequest(req["method"], req["path"], skip_host=False, skip_accept_encoding=True)
        for name, value in req["headers"].items():
            conn.putheader(name, value)
        if req["body"] is not None and "Content-Length" not in req["headers"]:
            conn.putheader("Content-Length", str(len(req["body"])))
        conn.endheaders(req["body"])
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data
    finally:
        conn.close()


def _may_see(fz: Fuzzed, account: str | None, owner: str) -> bool:
    if account is None:
        return False
    if owner.startswith("status-"):
        return owner == f"status-{account}"
    return fz.collections[owner] in fz.grants.get(account, frozenset())


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much, HealthCheck.large_base_example],
)
@given(data=st.data())
def test_no_generated_request_crashes_leaks_or_changes_what_it_should_not(fuzzed, data):
    fz = fuzzed
    req = data.draw(fuzz_request(fz), label="request")
    before = fingerprint(fz.store, fz.writable)
    try:
        status, headers, payload = _send(fz, req)
    except http.client.InvalidURL:
        return  # http.client refuses to send it: nothing reached the node
    fz.counts[(req["method"], status)] += 1

    assert fz.proc.running, "the node process died"
    assert status < 500, (status, payload[:500])
    health = urllib.parse.urlsplit(req["path"]).path == "/healthz"
    if 200 <= status < 300 and not health and req["method"] != "OPTIONS":  # OPTIONS: Flask's own answer (Allow, no body)
        assert headers.get("content-type") == TAXII, (status, headers)
        assert not repeated_filters(req["path"]), f"a repeated filter was answered {status}"
    if health and status == 200:
        assert headers.get("content-type") == "application/json"
        assert req["method"] == "HEAD" or orjson.loads(payload) == {"status": "ok"}
    if status >= 400 and req["method"] != "HEAD":
        assert headers.get("content-type", "").startswith("application/taxii+json"), (status, headers, payload[:300])
        doc = orjson.loads(payload)
        assert doc["http_status"] == str(status) and doc["title"] and doc["description"], doc
    if not (200 <= status < 300 and req["method"] in ("POST", "DELETE")):
        assert fingerprint(fz.store, fz.writable) == before, "a rejected request changed storage"
    text = payload.decode("latin-1")
    for owner in (*fz.collections, *(f"status-{o}" for o in STATUS_OWNERS)):
        if _marker(owner) in text:
            assert _may_see(fz, req["account"], owner), f"{req['account']!r} got {owner}'s content"
