"""The demo's withdrawal: a released indicator turns out to be a CDN address (issue 16, ``exchange.sharing.lifecycle``).

The US analyst learns that an advisory IPv4 indicator it released (TLP:CLEAR) is a shared CDN edge
address; the finding stays internal, so the new version is marked TLP:RED.  The node withdraws the
released version from ROK and Japan (a ``revoked`` version with only the required properties), and
ROK withdraws it from Japan in the same sync cycle.  ``withdrawal_leaks`` is the leak check's part
for withdrawals: no recipient's latest version is one its origin withdrew.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from exchange.sharing.attribution import stix_now
from exchange.sharing.lifecycle import lifecycle_report
from exchange.stix import object_version, parse_timestamp
from exchange.storage import audit
from exchange.storage.store import Store

RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"
FINDING = ("EXERCISE DATA: found to be a shared CDN edge address (benign sites resolve to it); "
           "kept internal, do not block.")


def _latest(ex: Any, node: str, account: str, alias: str, oid: str) -> dict | None:
    client = ex.client(node, account)
    try:
        found = client.collection(alias).get_objects(id=oid).get("objects") or []
    finally:
        client.close()
    return found[0] if found else None


def cdn_withdrawal(ex: Any, cycle: Callable[[Any, str], Any]) -> dict[str, Any]:
    """Re-mark one released US advisory IPv4 indicator TLP:RED over TAXII, run one sync cycle each way, and look."""
    client = ex.client("us", "rok")  # what the ROK partner can read at the US node
    try:
        released = [o for page in client.pages("rok-read") for o in page.objects
                    if o.get("type") == "indicator" and "ipv4-addr:value" in o.get("pattern", "") and not o.get("revoked")]
    finally:
        client.close()
    shared = sorted(released, key=lambda o: o["id"])[0]
    red = {**shared, "modified": stix_now(), "description": f"{shared.get('description', '')} {FINDING}".strip(),
           "object_marking_refs": [RED]}
    client = ex.client("us", "analyst")
    try:
        status = client.push("us-intel", [red])
    finally:
        client.close()
    cycle(ex, "us")
    cycle(ex, "rok")
    places = {"ROK (us-inbox at ROK)": ("rok", "analyst", "us-inbox"), "Japan at the US node": ("us", "jp", "jp-read"),
              "Japan at the ROK node": ("rok", "jp", "jp-read")}
    seen = {where: _latest(ex, *spec, shared["id"]) for where, spec in places.items()}
    ok = status["success_count"] == 1 and all(
        o is not None and o.get("revoked") is True and FINDING not in str(o) and RED not in str(o) for o in seen.values()
    )
    return {
        "object": shared["id"], "name": shared.get("name"), "released_version": object_version(shared),
        "restricted_version": red["modified"], "reason": "re-marked TLP:RED: found to be a CDN address",
        "latest": {where: {"version": o.get("modified"), "revoked": o.get("revoked", False)} if o else None for where, o in seen.items()},
        "ok": ok,
    }


def withdrawn_counts(ex: Any) -> dict[str, int]:
    """``"withdrawn": N`` per direction (``node->partner``) from both nodes' audit logs."""
    logs = {}
    for name, handle in ex.nodes.items():
        if handle.data_dir is None and handle.database is None:
            continue
        store = Store.open(data_dir=handle.data_dir, database=handle.database)
        try:
            logs[name] = list(audit.entries(store))
        finally:
            store.close()
    return lifecycle_report(logs)["withdrawn"]


def withdrawal_leaks(ex: Any, partner_of: dict[str, str]) -> tuple[int, list[str]]:
    """For every withdrawal a node recorded: the recipient's latest version, wherever it reads, is not older."""
    checked = 0
    leaks: list[str] = []
    for name, handle in ex.nodes.items():
        if handle.data_dir is None and handle.database is None:
            continue
        store = Store.open(data_dir=handle.data_dir, database=handle.database)
        try:
            entries = [e for e in audit.entries(store) if e["event"] == "withdraw"]
        finally:
            store.close()
        partner = partner_of[name]
        for e in entries:
            views = [(name, e["partner"], f"{e['partner']}-read")]
            if e["partner"] == partner:
                views.append((partner, "analyst", f"{name}-inbox"))
            for node, account, alias in views:
                checked += 1
                got = _latest(ex, node, account, alias, e["object_id"])
                if e["detail"].get("action") == "removed":
                    if got is not None and object_version(got) == e["detail"].get("withdrawn_version") and node == name:
                        leaks.append(f"{e['object_id']} removed for {e['partner']} is still served in {alias} on {node}")
                    continue
                if got is None or object_version(got) is None or e["version"] is None:
                    continue
                if parse_timestamp(object_version(got)) < parse_timestamp(e["version"]):
                    leaks.append(f"{e['object_id']}: {alias} on {node} serves {object_version(got)} as latest, "
                                 f"older than its withdrawal {e['version']}")
    return checked, leaks
