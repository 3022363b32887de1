"""Helpers for the hostile-input and fuzz tests: a node with its own limits, raw HTTP, storage fingerprints."""

from __future__ import annotations

import http.client
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path

import orjson
import yaml

from exchange.config import collections_dir, load_node

TAXII = "application/taxii+json;version=2.1"


def node_dir_with(tmp: Path, node: str = "us", **sections: dict) -> Path:
    """A copy of ``collections/<node>`` (and the identities) whose node.yaml has ``sections`` merged in."""
    src = collections_dir()
    dst = tmp / "collections"
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "identities.json", dst / "identities.json")
    shutil.copytree(src / node, dst / node, ignore=shutil.ignore_patterns("seed"))
    path = dst / node / "node.yaml"
    data = yaml.safe_load(path.read_text())
    for key, values in sections.items():
        if isinstance(data.get(key), dict):
            data[key].update(values)
        else:
            data[key] = values
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    load_node(str(dst / node))  # still a valid node file
    return dst / node


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return orjson.loads(self.body)


def raw_request(
    port: int, method: str, path: str, *, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 30
) -> Answer:
    """One request with ``http.client`` (no URL normalisation: ``..`` and ``%2e`` go out as written)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.putrequest(method, path, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        if body is not None and not any(k.lower() == "content-length" for k in (headers or {})):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        data = resp.read()
        return Answer(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def read_response(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout``)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def assert_taxii_error(status: int, headers: dict[str, str], body: bytes, expected: int | tuple[int, ...]) -> dict:
    """A TAXII 2.1 error message (s3.6.1) with the expected status."""
    allowed = (expected,) if isinstance(expected, int) else expected
    assert status in allowed, (status, body[:500])
    ctype = {k.lower(): v for k, v in headers.items()}.get("content-type", "")
    assert ctype.startswith("application/taxii+json"), (ctype, body[:300])
    doc = orjson.loads(body)
    assert doc["http_status"] == str(status)
    assert doc["title"] and doc["description"]
    return doc


def fingerprint(store, collection_ids: list[str]) -> tuple:
    """What a rejected request must not change: per collection, row count and last row; the status count."""
    from sqlalchemy import func, select

    from exchange.storage.schema import collections, objects, statuses

    with store.engine.connect() as conn:
        rows = conn.execute(
            select(collections.c.collection_id, func.count(), func.max(objects.c.seq))
            .select_from(objects.join(collections, collections.c.key == objects.c.coll))
            .where(collections.c.collection_id.in_(collection_ids))
            .group_by(collections.c.collection_id)
        ).all()
        n_status = conn.execute(select(func.count()).select_from(statuses)).scalar()
    return tuple(sorted(tuple(r) for r in rows)) + (("statuses", n_status),)
