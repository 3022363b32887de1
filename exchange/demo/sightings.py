"""The demo's sighting round trip: ROK's seeded sighting of a US TLP:AMBER indicator goes back to the US only.

The ROK seed (``collections/rok/seed/exercise.json``) holds a ``sighting`` of the US
indicator "ThreatNeedle loader hash (exercise)" (TLP:AMBER).  ROK's release defers it
until the US indicator has arrived (``scf.integrity-required-refs``), then releases it to
the US, its producer (``cert.sighting-to-producer``), and never to Japan
(``tri.jp-amber-withheld``); the sync carries it to the US inbox, and the US sees it
with ``cti-exchange sighting list`` and in ``cti-exchange trace``.
"""

from __future__ import annotations

from typing import Any

SEED_SIGHTING = "sighting--3f7b2a61-8c4d-5e9f-a0b1-c2d3e4f5a6b7"
SIGHTED = "indicator--83e99773-4f84-562c-8ecf-56e5ef35a3cb"


def sighting_round(ex: Any, jp_can_read: Any) -> dict[str, Any]:
    """Where ROK's seeded sighting is now: at the US (its producer), not readable by Japan at either node."""
    client = ex.client("us", "analyst")
    try:
        at_us = client.reveal("rok-inbox", SEED_SIGHTING, endpoints=("objects",))["objects"]
    finally:
        client.close()
    readable_by_jp = jp_can_read(ex, SEED_SIGHTING)
    count = at_us[0].get("count") if at_us else None
    return {"sighting": SEED_SIGHTING, "of": SIGHTED, "by": "rok", "count": count, "reached_us": bool(at_us),
            "readable_by_jp": readable_by_jp, "ok": bool(at_us) and not readable_by_jp}
