"""The report (issue 19, item 4): objects and versions apart, public sources named with their clause, clause counts
that add up, the same columns in the terminal and the HTML, linear charts in colours that cannot be read as TLP."""

from __future__ import annotations

import json
import re

import orjson
import pytest
from click.testing import CliRunner

from exchange.cli import main
from exchange.config import collections_dir
from exchange.sharing.report import SUMMARY_COLUMNS, Tally
from exchange.sharing.ui.charts import nice_ticks
from tests.conftest import new_indicator

US_ID = "identity--371ec1f1-c078-4fd3-9eff-c233c753c388"
GREEN = "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb"
RED = "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1"


def _attack_sample() -> list[dict]:
    """One ATT&CK intrusion set with the MITRE identity and marking it references (a public source)."""
    objs = orjson.loads((collections_dir() / "attack-dprk" / "attack-dprk.json").read_bytes())["objects"]
    by_id = {o["id"]: o for o in objs}
    group = next(o for o in objs if o["type"] == "intrusion-set")
    return [by_id[group["created_by_ref"]], *(by_id[m] for m in group.get("object_marking_refs", []) if m in by_id), group]


def _load(tmp_path, objs, name):
    path = tmp_path / name
    path.write_bytes(orjson.dumps({"type": "bundle", "id": "bundle--6b1b4d8e-27a0-4c2c-a5e4-0f1d7c3b2a10", "objects": objs}))
    result = CliRunner().invoke(main, ["load", "us", str(path), "--data-dir", str(tmp_path / "us"), "--init"])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def known(tmp_path_factory):
    """A US node that released two versions of one indicator, a second indicator, a TLP:RED one, and an ATT&CK object."""
    tmp_path = tmp_path_factory.mktemp("report")
    v1 = new_indicator(1, created_by_ref=US_ID, marking=GREEN)
    v2 = dict(v1, modified="2024-02-01T00:00:00.000Z", name="test indicator 1, corrected")
    other = new_indicator(2, created_by_ref=US_ID, marking=GREEN)
    red = new_indicator(3, created_by_ref=US_ID, marking=RED)
    _load(tmp_path, [v1, other, red, *_attack_sample()], "first.json")
    _load(tmp_path, [v2], "second.json")  # the same content released again: a new version of the same object
    return tmp_path / "us"


def _report(data):
    result = CliRunner().invoke(main, ["report", "--data-dir", str(data), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_two_releases_of_one_object_count_as_one_object_and_two_versions(known, tmp_path):
    data = known
    to_rok = _report(data)["directions"]["us->rok"]
    indicators = to_rok["by_type"]["indicator"]
    assert indicators == {"share": 3, "withhold": 1}  # object versions: v1, v2, the other; the red one withheld
    versions, objects = to_rok["versions"], to_rok["objects"]
    assert versions["share"] - objects["share"] == 1  # the indicator released twice is one object
    assert to_rok["decisions"] == versions


def test_public_source_content_is_shown_as_such_with_its_clause(known, tmp_path):
    data = known
    by_tlp = _report(data)["directions"]["us->rok"]["by_tlp"]
    assert by_tlp["public source (scf.public-sources)"]["share"] == len(_attack_sample())  # with its MITRE identity and marking
    assert "none" not in by_tlp


def test_clause_counts_add_up_to_the_versions_decided(known, tmp_path):
    data = known
    report = _report(data)
    for name, d in report["directions"].items():
        assert sum(d["clauses"].values()) == sum(d["versions"].values()), name
        for decision in ("share", "redact", "withhold"):
            assert sum(n for k, n in d["clauses"].items() if k.startswith(decision + ": ")) == d["versions"][decision]
    assert "deciding clause" in report["clauses_note"]


def test_terminal_has_a_by_type_table_and_the_same_columns_as_the_html(known, tmp_path):
    data = known
    page = tmp_path / "r.html"
    result = CliRunner().invoke(main, ["report", "--data-dir", str(data), "--html", str(page)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "us->rok: by STIX type (object versions)" in result.output
    html = page.read_text()
    summary = html.split('<table id="summary">', 1)[1].split("</table>", 1)[0]
    headers = re.findall(r"<th[^>]*>([^<]+)</th>", summary)
    assert headers == ["direction", *(label for _k, label in SUMMARY_COLUMNS)]
    assert "kept off plain HTTP" in headers
    first_line = next(line for line in result.output.splitlines() if "direction" in line)
    for label in ("shared", "redacted", "withheld", "withdrawn", "arrived"):
        assert label in first_line


def test_html_charts_use_linear_axes_and_no_traffic_light_colours(known, tmp_path):
    data = known
    page = tmp_path / "r.html"
    assert CliRunner().invoke(main, ["report", "--data-dir", str(data), "--html", str(page)]).exit_code == 0
    html = page.read_text().lower()
    assert html.count("<svg") >= 3 and "linear scale" in html
    assert "10^" not in html and "symlog" not in html and "log scale" not in html
    fills = set(re.findall(r'fill="(#[0-9a-f]{6})"', html))
    assert fills
    for colour in fills:
        r, g, b = (int(colour[i:i + 2], 16) for i in (1, 3, 5))
        greenish = g > r + 40 and g > b + 40
        reddish_or_amber = r > g + 40 and r > b + 40
        assert not greenish and not reddish_or_amber, colour
    assert "<script" not in html and "<link" not in html


def test_linear_ticks_start_at_zero_and_cover_the_largest_value():
    for top in (1, 7, 10, 99, 2542, 100_000):
        ticks = nice_ticks(top)
        assert ticks[0] == 0 and ticks[-1] >= top
        steps = {b - a for a, b in zip(ticks, ticks[1:], strict=False)}
        assert len(steps) == 1  # evenly spaced: a linear axis


def test_withdrawals_and_unknown_events_are_counted_generically():
    tally = Tally(public_clauses=())
    base = {"seq": 1, "at": 1_800_000_000_000_000, "partner": "rok", "object_id": "indicator--1", "version": "v1", "clauses": [],
            "detail": {"type": "indicator", "tlp": "TLP:GREEN"}}
    tally.add("us", dict(base, event="share", decision="share", clauses=["scf.green-partner"]))
    tally.add("us", dict(base, event="withdraw", decision="withdrawn"))
    tally.add("us", dict(base, event="receipt", decision="received"))
    d = tally.summary()["directions"]["us->rok"]
    assert d["withdrawn"] == {"objects": 1, "versions": 1}
    assert tally.events[("us", "receipt", "rok")] == 1
