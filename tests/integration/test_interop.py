"""TAXII interop and availability (issue 18): media types, repeated filters, discovery URLs, /healthz.

Every test talks HTTP to a real node process on 127.0.0.1 (ephemeral port).
Media-type negotiation and query parsing happen before storage is touched, so
these run on the SQLite backend only.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import orjson
import pytest
import requests

from exchange.config import load_node
from exchange.errors import ConfigError
from tests.conftest import PASSWORDS, NodeProcess, new_indicator, provision
from tests.integration.hostile import TAXII, assert_taxii_error, node_dir_with

AUTH = ("analyst", PASSWORDS["analyst"])
FILTERS = ("match[type]", "match[id]", "match[version]", "match[spec_version]", "added_after", "limit", "next")


def _start(tmp: Path, *extra_args: str, **sections) -> NodeProcess:
    node_dir = str(node_dir_with(tmp, **sections))
    data = tmp / "data"
    provision(node_dir, data)
    proc = NodeProcess(node_dir, data, extra_args=extra_args).start()
    proc.port = urllib.parse.urlsplit(proc.url).port
    proc.intel = proc.collection_url("us-intel")  # type: ignore[attr-defined]
    return proc


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("interop")
    proc = _start(tmp, auth={"max_failed_logins": 3, "failed_login_window": 60})
    indicator = new_indicator(1)
    malware = {
        "type": "malware", "spec_version": "2.1", "id": "malware--2f6f1d4c-9f0e-4d43-b3d5-8d5f0c1a6a11",
        "created": "2024-01-01T00:00:00.000Z", "modified": "2024-01-01T00:00:00.000Z", "name": "interop malware", "is_family": False,
    }
    resp = requests.post(
        proc.intel + "objects/", data=orjson.dumps({"objects": [indicator, malware]}),
        headers={"Accept": TAXII, "Content-Type": TAXII}, auth=AUTH, timeout=10,
    )
    assert resp.status_code == 202 and resp.json()["success_count"] == 2
    proc.seeded = {"indicator": indicator["id"], "malware": malware["id"]}  # type: ignore[attr-defined]
    try:
        yield proc
    finally:
        proc.stop()


def _get(url: str, accept: str | None = TAXII, **kwargs) -> requests.Response:
    headers = {} if accept is None else {"Accept": accept}
    headers.update(kwargs.pop("headers", {}))
    return requests.get(url, headers=headers, auth=kwargs.pop("auth", AUTH), timeout=10, allow_redirects=False, **kwargs)


def _post(node, content_type: str | None, accept: str | None = TAXII) -> requests.Response:
    headers = {}
    if accept is not None:
        headers["Accept"] = accept
    if content_type is not None:
        headers["Content-Type"] = content_type
    body = orjson.dumps({"objects": [new_indicator(7)]})
    return requests.post(node.intel + "objects/", data=body, headers=headers, auth=AUTH, timeout=10)


def _endpoints(node) -> list[str]:
    oid = node.seeded["indicator"]
    return [
        node.base + "taxii2/", node.url, node.url + "collections/", node.intel, node.intel + "objects/", node.intel + "manifest/",
        node.intel + f"objects/{oid}/", node.intel + f"objects/{oid}/versions/",
    ]


# -- 1. the unversioned media type means TAXII 2.1 (s1.6.8) --------------------------------------


def test_bare_taxii_media_type_is_version_2_1(node):
    for url in _endpoints(node):
        resp = _get(url, "application/taxii+json")
        assert resp.status_code == 200, (url, resp.text)
        assert resp.headers["Content-Type"] == TAXII
    posted = _post(node, "application/taxii+json", accept="application/taxii+json")
    assert posted.status_code == 202, posted.text
    assert posted.headers["Content-Type"] == TAXII
    assert posted.json()["success_count"] == 1


# -- 2. Accept and Content-Type as RFC 9110 reads them -------------------------------------------

ACCEPTED = [
    "application/xml;q=0.9, application/taxii+json;version=2.1;q=0.8",
    "Application/TAXII+JSON;version=2.1",
    "application/taxii+json;VERSION=2.1",
    "application/taxii+json;version=2.1;charset=utf-8",
    'application/taxii+json; version="2.1"; charset="UTF-8"',
    "application/taxii+json  ;  version=2.1 ,  application/xml ;q=0.5",
    "application/xml,,application/taxii+json;version=2.1",
    "application/taxii+json;version=2.1;q=1.000",
    "application/taxii+json;version=3.0, application/taxii+json;version=2.1",
    "text/html, application/taxii+json",
    "*/*",
    "application/*",
    "text/html;q=1, */*;q=0.1",
    "application/taxii+json;version=2.1;q=0.001, application/xml",
    None,
]


@pytest.mark.parametrize("accept", ACCEPTED)
def test_accept_is_matched_as_rfc_9110_says(node, accept):
    for url in (node.base + "taxii2/", node.intel + "objects/"):
        resp = _get(url, accept)
        assert resp.status_code == 200, (accept, url, resp.text)
        assert resp.headers["Content-Type"] == TAXII


REFUSED = [
    "application/xml",
    "application/taxii+json;version=3.0",
    "application/taxii+json;version=2.0",
    "application/taxii+json;version=2.1;q=0",
    "application/taxii+json;q=0",
    "*/*;q=0",
    "application/taxii+json;version=2.1;q=0, */*",
    "application/taxii+json;q=0, application/*;q=1",
    "text/*",
    "application/json",
    "application/stix+json;version=2.1",
    "application/taxii+json;version=2.1;charset=iso-8859-1",
    "garbage",
]


@pytest.mark.parametrize("accept", REFUSED)
def test_unacceptable_accept_is_406(node, accept):
    for url in (node.base + "taxii2/", node.intel + "objects/"):
        resp = _get(url, accept)
        doc = assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 406)
        assert TAXII in doc["description"]


def test_unsupported_version_is_named_in_the_406(node):
    resp = _get(node.intel + "objects/", "application/taxii+json;version=3.0")
    doc = assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 406)
    assert "3.0" in doc["description"]


def test_accept_is_checked_after_authentication(node):
    resp = _get(node.intel + "objects/", "application/xml", auth=None)
    assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 401)


@pytest.mark.parametrize("content_type", [
    "application/taxii+json;version=2.1;charset=utf-8",
    "application/taxii+json; charset=UTF-8; version=2.1",
    "Application/TAXII+JSON; Version=2.1",
    'application/taxii+json;version="2.1"',
    "application/taxii+json;charset=utf-8",
])
def test_content_type_with_parameters_is_accepted_on_post(node, content_type):
    resp = _post(node, content_type)
    assert resp.status_code == 202, (content_type, resp.text)
    assert resp.headers["Content-Type"] == TAXII
    assert resp.json()["success_count"] == 1


@pytest.mark.parametrize("content_type", [
    None, "", "application/json", "text/plain", "application/stix+json;version=2.1", "application/taxii+json;version=2.0",
    "application/taxii+json;version=2.1;charset=iso-8859-1", "application/taxii+json;version=2.1, text/plain",
])
def test_other_content_types_are_415(node, content_type):
    resp = _post(node, content_type)
    assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 415)


# -- 3. repeated filter parameters ----------------------------------------------------------------


def _repeated(name: str, node) -> tuple[str, str]:
    values = {
        "match[type]": ("indicator", "malware"),
        "match[id]": (node.seeded["indicator"], node.seeded["malware"]),
        "match[version]": ("first", "last"),
        "match[spec_version]": ("2.0", "2.1"),
        "added_after": ("2020-01-01T00:00:00Z", "2021-01-01T00:00:00Z"),
        "limit": ("1", "2"),
        "next": ("abc", "def"),
    }
    return values[name]


@pytest.mark.parametrize("name", FILTERS)
def test_repeated_filter_parameter_is_400_naming_it(node, name):
    a, b = _repeated(name, node)
    query = urllib.parse.urlencode([(name, a), (name, b)])
    for url in (node.intel + "objects/", node.intel + "manifest/"):
        resp = _get(f"{url}?{query}")
        doc = assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 400)
        assert name in doc["description"], doc


def test_repeated_parameter_counts_however_it_is_encoded(node):
    resp = _get(node.intel + "objects/?match%5Btype%5D=indicator&match[type]=malware")
    doc = assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 400)
    assert "match[type]" in doc["description"]


def test_repeated_parameter_on_object_and_versions_endpoints_is_400(node):
    oid = node.seeded["indicator"]
    for url in (node.intel + f"objects/{oid}/", node.intel + f"objects/{oid}/versions/"):
        resp = _get(url + "?match[spec_version]=2.1&match[spec_version]=2.1")
        assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 400)


def test_comma_list_still_selects_several_values(node):
    resp = _get(node.intel + "objects/?match[type]=indicator,malware")
    assert resp.status_code == 200
    types = {o["type"] for o in resp.json()["objects"]}
    assert types == {"indicator", "malware"}
    ids = ",".join(node.seeded.values())
    resp = _get(node.intel + f"objects/?match[id]={ids}")
    assert {o["id"] for o in resp.json()["objects"]} == set(node.seeded.values())


def test_other_repeated_parameters_are_left_alone(node):
    resp = _get(node.intel + "objects/?x-vendor=1&x-vendor=2")
    assert resp.status_code == 200


# -- 4. discovery URLs come from configuration or the bound address, never the Host header --------


def _discovery(node, **headers) -> dict:
    resp = _get(node.base + "taxii2/", headers=headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_host_header_is_not_reflected_in_discovery(node):
    bound = f"http://127.0.0.1:{node.port}/us/"
    for host in ("evil.example:1", "evil.example", "127.0.0.1:1", "[::1]:2"):
        doc = _discovery(node, Host=host)
        assert doc["default"] == bound, (host, doc)
        assert doc["api_roots"] == [bound]
        assert "evil" not in orjson.dumps(doc).decode()


def test_host_header_is_not_reflected_in_redirects(node):
    resp = _get(node.base + "us", headers={"Host": "evil.example:1"})
    assert resp.status_code == 308
    assert resp.headers["Location"] == f"http://127.0.0.1:{node.port}/us/"
    assert b"evil" not in resp.content


def test_public_url_from_node_yaml_is_used_in_discovery(tmp_path):
    proc = _start(tmp_path, public_url="https://cti.example.org")
    try:
        doc = _discovery(proc, Host="evil.example:1")
        assert doc["default"] == "https://cti.example.org/us/"
        assert doc["api_roots"] == ["https://cti.example.org/us/"]
    finally:
        proc.stop()


def test_public_url_option_overrides_node_yaml(tmp_path):
    proc = _start(tmp_path, "--public-url", "https://taxii.example.net:8443/exchange/", public_url="https://cti.example.org/")
    try:
        doc = _discovery(proc, Host="evil.example:1")
        assert doc["default"] == "https://taxii.example.net:8443/exchange/us/"
        assert doc["api_roots"] == [doc["default"]]
    finally:
        proc.stop()


BAD_URLS = [
    "ftp://cti.example.org/", "cti.example.org", "https://", "https://cti.example.org/?x=1", "https://cti.example.org/#top",
    "https://user:pw@cti.example.org/", "https://cti.example.org:99999/", "javascript:alert(1)", "",
]


@pytest.mark.parametrize("url", BAD_URLS)
def test_bad_public_url_in_node_yaml_is_a_one_line_config_error(tmp_path, url):
    with pytest.raises(ConfigError) as caught:
        node_dir_with(tmp_path, public_url=url)
    message = str(caught.value)
    assert "public_url" in message and "\n" not in message, message


@pytest.mark.parametrize("url", ["ftp://cti.example.org/", "https://cti.example.org/?x=1"])
def test_bad_public_url_option_is_refused_before_serving(tmp_path, url):
    cmd = [sys.executable, "-m", "exchange", "serve", "us", "--data-dir", str(tmp_path / "data"), "--port", "0", "--public-url", url]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "public-url" in done.stderr or "public_url" in done.stderr, done.stderr
    assert "API root" not in done.stdout


# -- 5. /healthz ----------------------------------------------------------------------------------


def test_healthz_answers_ok_without_credentials(node):
    resp = requests.get(node.base + "healthz", timeout=10, allow_redirects=False)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.json() == {"status": "ok"}
    head = requests.head(node.base + "healthz", timeout=10, allow_redirects=False)
    assert head.status_code == 200 and not head.content
    for accept in ("*/*", "text/html", "application/xml"):
        assert requests.get(node.base + "healthz", headers={"Accept": accept}, timeout=10).status_code == 200


def test_healthz_ignores_credentials_and_the_login_throttle(node):
    bad = ("jp", "not-the-password")
    for _ in range(6):  # twice the node's max_failed_logins
        resp = requests.get(node.base + "healthz", auth=bad, timeout=10)
        assert resp.status_code == 200 and resp.json() == {"status": "ok"}
    # jp's name was not locked by those: the right password still works
    ok = _get(node.url + "collections/", auth=("jp", PASSWORDS["jp"]))
    assert ok.status_code == 200, ok.text


def test_other_unauthenticated_paths_still_401(node):
    for url in [*_endpoints(node), node.base + "healthz/"]:
        resp = _get(url, auth=None)
        assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 401)


def test_healthz_refuses_other_methods(node):
    for method in ("POST", "PUT", "DELETE"):
        resp = requests.request(method, node.base + "healthz", timeout=10)
        assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, 405)
    # a body from a stranger is refused from the request head (README "Hostile input"), before routing
    resp = requests.post(node.base + "healthz", data=b"{}", timeout=10)
    assert_taxii_error(resp.status_code, dict(resp.headers), resp.content, (401, 405))


def proc_db(data: Path) -> Path:
    from exchange.storage.store import sqlite_url

    return Path(sqlite_url(data).removeprefix("sqlite:///"))


def test_healthz_names_a_failing_database(tmp_path):
    proc = _start(tmp_path)
    try:
        assert requests.get(proc.base + "healthz", timeout=10).json() == {"status": "ok"}
        db = proc_db(tmp_path / "data")
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE meta RENAME TO meta_gone")
        resp = requests.get(proc.base + "healthz", timeout=10)
        assert resp.status_code == 503, resp.text
        assert resp.json() == {"status": "unavailable", "failing": "database"}
        with sqlite3.connect(db) as conn:
            conn.execute("ALTER TABLE meta_gone RENAME TO meta")
        assert requests.get(proc.base + "healthz", timeout=10).json() == {"status": "ok"}
    finally:
        proc.stop()


def test_healthz_names_low_disk_space(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    proc = _start(tmp_path, health={"min_free_disk": free * 4 + 2**40})
    try:
        resp = requests.get(proc.base + "healthz", timeout=10)
        assert resp.status_code == 503, resp.text
        assert resp.headers["Content-Type"] == "application/json"
        assert resp.json() == {"status": "unavailable", "failing": "disk"}
        # TAXII endpoints are not affected by the probe
        assert _get(proc.base + "taxii2/").status_code == 200
    finally:
        proc.stop()


def test_health_threshold_is_validated(tmp_path):
    with pytest.raises(ConfigError) as caught:
        node_dir_with(tmp_path / "a", health={"min_free_disk": -1})
    assert "health.min_free_disk" in str(caught.value)
    assert load_node(str(node_dir_with(tmp_path / "b", health={"min_free_disk": 0}))).config.health.min_free_disk == 0


# -- no static files from wherever the node was started ---------------------------------------------


def test_no_files_are_served_from_the_working_directory(tmp_path, monkeypatch):
    cwd = tmp_path / "cwd"
    (cwd / "static").mkdir(parents=True)
    (cwd / "static" / "secret.txt").write_text("do not serve me")
    monkeypatch.chdir(cwd)
    proc = _start(tmp_path)
    try:
        resp = requests.get(proc.base + "static/secret.txt", timeout=10)
        assert b"do not serve me" not in resp.content
        assert resp.status_code in (401, 404)
    finally:
        proc.stop()
