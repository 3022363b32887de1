"""The node's web page in a real browser (Debian's chromium driven by Playwright; no browser download).

One seeded, synced node pair and one browser for the whole module: an analyst opens every page and
the numbers shown are the node's audit (``report --json``, ``audit verify``); a link from a decision
leads to its object page; a partner's account gets 403 and no credentials 401. Screenshots go to
the test's temporary folder.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.node.ops import open_node
from exchange.sharing import attribution
from exchange.storage import audit
from exchange.storage.store import Store
from tests.e2e.conftest import PASSWORDS, Pair

CHROMIUM = os.environ.get("CTI_EXCHANGE_TEST_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync"]


def _why_no_browser() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        return f"playwright is not installed ({exc}); pip install -e '.[test]'"
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        return f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; .ci/run installs it as root)"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator:
    """One chromium with a fresh profile, and a context on it without credentials (each page sets its own)."""
    why = _why_no_browser()
    if why:
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, args=ARGS, headless=True, viewport={"width": 1366, "height": 900},
            env={**os.environ, "HOME": str(profile)},
        )
        ctx.set_default_timeout(30_000)
        try:
            yield ctx
        finally:
            ctx.close()


def _as(browser, account: str | None, password: str | None = None):
    page = browser.new_page()
    if account:
        token = base64.b64encode(f"{account}:{password}".encode()).decode()
        page.set_extra_http_headers({"Authorization": f"Basic {token}"})
    return page


@pytest.fixture(scope="module")
def analyst(browser, synced_pair: Pair):
    page = _as(browser, "analyst", PASSWORDS["us"]["analyst"])
    yield page
    page.close()


def _url(pair: Pair, path: str = "") -> str:
    return f"{pair.procs['us'].base}ui/{path}"


def _report_json(pair: Pair) -> dict:
    out = subprocess.run([sys.executable, "-m", "exchange", "report", "--data-dir", str(pair.procs["us"].data_dir), "--json"],
                         capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout)


def _cell(page, table: str, row_attr: str, row: str, col: str) -> int:
    return int(page.locator(f'table#{table} tr[{row_attr}="{row}"] td[data-col="{col}"]').inner_text().replace(",", ""))


def test_overview_shows_the_counts_of_the_nodes_audit(analyst, synced_pair: Pair, tmp_path: Path):
    resp = analyst.goto(_url(synced_pair))
    assert resp.status == 200
    report = _report_json(synced_pair)
    to_rok, from_rok = report["directions"]["us->rok"], report["directions"]["rok->us"]
    assert _cell(analyst, "partners", "data-partner", "rok", "share-versions") == to_rok["versions"]["share"]
    assert _cell(analyst, "partners", "data-partner", "rok", "share-objects") == to_rok["objects"]["share"]
    assert _cell(analyst, "partners", "data-partner", "rok", "withhold-versions") == to_rok["versions"]["withhold"]
    assert _cell(analyst, "partners", "data-partner", "rok", "arrived") == from_rok["arrived"] > 0
    assert _cell(analyst, "summary", "data-direction", "us->jp", "shared") == report["directions"]["us->jp"]["versions"]["share"]
    store = Store.open(data_dir=synced_pair.procs["us"].data_dir)
    try:
        verdict = audit.verify(store)
    finally:
        store.close()
    assert analyst.locator("#chain [data-chain]").inner_text() == "verified"
    assert int(analyst.locator("#chain-length").inner_text()) == verdict.entries
    assert analyst.locator("svg").count() >= 3 and "linear scale" in analyst.content()
    assert analyst.locator('meta[http-equiv="refresh"]').count() == 1
    analyst.screenshot(path=str(tmp_path / "overview.png"), full_page=True)
    assert (tmp_path / "overview.png").stat().st_size > 10_000


def test_a_withheld_decision_links_to_its_object_page_and_its_clause(analyst, synced_pair: Pair, tmp_path: Path):
    analyst.goto(_url(synced_pair, "decisions?partner=rok&decision=withhold"))
    store = Store.open(data_dir=synced_pair.procs["us"].data_dir)
    try:
        records = [e for e in audit.entries(store) if e["event"] == "withhold" and e["partner"] == "rok"]
    finally:
        store.close()
    assert int(analyst.locator("#match-count").inner_text()) == len(records) > 0
    rows = analyst.locator("table#decisions tr").count() - 1
    assert rows == min(len(records), 50)
    link = analyst.locator("table#decisions a.object").first
    object_id = link.inner_text()
    link.click()
    analyst.wait_for_load_state()
    assert analyst.url.endswith(f"/ui/objects/{object_id}")
    decided = analyst.locator("table#object-decisions tr", has_text="rok")
    assert decided.count() >= 1 and "withheld" in decided.first.inner_text()
    stix = analyst.locator("pre.stix").first.inner_text()
    assert json.loads(stix)["id"] == object_id  # the analyst reads the own collection: the STIX JSON of the version
    analyst.screenshot(path=str(tmp_path / "object.png"), full_page=True)
    clause = analyst.locator("table#object-decisions a").first
    clause_id = clause.inner_text()
    clause.click()
    analyst.wait_for_load_state()
    assert analyst.locator("h1").inner_text() == f"Clause {clause_id}"
    assert analyst.locator("#quote").inner_text().strip()
    assert analyst.locator("#conservative").inner_text().startswith(("yes", "no"))


def test_attribution_and_partner_pages_show_the_nodes_state(analyst, synced_pair: Pair, tmp_path: Path):
    opened = open_node("us", data_dir=synced_pair.procs["us"].data_dir)
    try:
        proposals = attribution.status(opened)
        accounts = opened.store.accounts()
    finally:
        opened.close()
    analyst.goto(_url(synced_pair, "attribution"))
    assert analyst.locator("table#proposals tr[data-state]").count() == len(proposals)
    analyst.goto(_url(synced_pair, "partners"))
    for name, _pw, partner, _r, _w in accounts:
        row = analyst.locator(f'table#accounts tr[data-account="{name}"]')
        assert row.count() == 1 and ("partner" if partner else "analyst") in row.inner_text()
    assert "pull bookmark" in analyst.content()
    analyst.screenshot(path=str(tmp_path / "partners.png"), full_page=True)


def test_a_partner_account_gets_403_and_no_credentials_401(browser, synced_pair: Pair):
    partner = _as(browser, "rok", PASSWORDS["us"]["rok"])
    stranger = _as(browser, None)
    try:
        for path in ("", "decisions", "partners", "objects/indicator--8e2e2d2b-17d4-4cbd-938b-0d9e1b7b1d3f"):
            resp = partner.goto(_url(synced_pair, path))
            assert resp.status == 403, path
            assert "indicator--" not in partner.content().replace("indicator--8e2e2d2b-17d4-4cbd-938b-0d9e1b7b1d3f", "")
            # chromium aborts a navigation that meets an auth challenge it has no credentials for
            # (net::ERR_INVALID_AUTH_CREDENTIALS): the page's own request context shows the answer
            answer = stranger.request.get(_url(synced_pair, path))
            assert answer.status == 401 and answer.headers["www-authenticate"].startswith("Basic"), path
    finally:
        partner.close()
        stranger.close()
