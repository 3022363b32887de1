"""Accept / Content-Type matching (RFC 9110 s12.5.1, s8.3.1) and the public URL check, without a server."""

from __future__ import annotations

import pytest

from exchange.config import check_public_url
from exchange.node.backend import bound_url
from exchange.node.server import MediaRange, parse_media_list, taxii_acceptable, taxii_content_type_ok


def test_parse_media_list_reads_case_quotes_weights_and_extensions():
    got = parse_media_list('Application/TAXII+JSON ; Version="2.1" ;q=0.5;ext=1, text/html,, bad, */*;q=x')
    assert got == [MediaRange("application", "taxii+json", {"version": "2.1"}, 0.5), MediaRange("text", "html", {}, 1.0), None, None]


def test_quoted_commas_stay_in_their_member():
    assert parse_media_list('application/taxii+json;x="a,b", text/html') == [
        MediaRange("application", "taxii+json", {"x": "a,b"}), MediaRange("text", "html", {}),
    ]


@pytest.mark.parametrize(("accept", "ok"), [
    (None, True), ("", True), ("  ", True), ("*/*", True), ("application/*", True), ("application/taxii+json", True),
    ("application/taxii+json;version=2.1;charset=UTF-8", True), ("text/html;q=1, */*;q=0.001", True),
    ("application/taxii+json;version=2.1;q=0, */*", False), ("application/*;q=0, application/taxii+json", True),
    ("application/taxii+json;q=0, application/taxii+json;version=2.1", True), ("*/*;q=0", False), ("text/*", False),
    ("application/taxii+json;version=2.0", False), ("application/taxii+json;level=1", False), ("application/json", False),
    ("application/taxii+json;q=2", False), ("garbage", False), ('application/taxii+json;version="2.1', False),
])
def test_taxii_acceptable(accept, ok):
    assert taxii_acceptable(accept) is ok


@pytest.mark.parametrize(("ctype", "ok"), [
    ("application/taxii+json;version=2.1", True), ("application/taxii+json", True), ("APPLICATION/Taxii+Json; charset=utf-8", True),
    (None, False), ("", False), ("application/taxii+json;q=1", False), ("application/taxii+json;version=2.1, text/plain", False),
    ("application/stix+json;version=2.1", False), ("*/*", False), ("application/taxii+json;charset=latin-1", False),
])
def test_taxii_content_type_ok(ctype, ok):
    assert taxii_content_type_ok(ctype) is ok


@pytest.mark.parametrize(("url", "normal"), [
    ("https://cti.example.org", "https://cti.example.org/"),
    ("HTTP://cti.example.org:8080/taxii", "http://cti.example.org:8080/taxii/"),
    ("https://[2001:db8::1]/", "https://[2001:db8::1]/"),
])
def test_public_url_is_normalised(url, normal):
    assert check_public_url(url) == normal


class _Sock:
    def __init__(self, name):
        self.name = name

    def getsockname(self):
        return self.name


def test_bound_url_of_a_connection():
    assert bound_url(_Sock(("127.0.0.1", 6100)), "http") == "http://127.0.0.1:6100/"
    assert bound_url(_Sock(("::1", 6100, 0, 0)), "https") == "https://[::1]:6100/"
    assert bound_url(_Sock("/run/node.sock"), "http") == "http://localhost/"
    assert bound_url(None, "http") == "http://localhost/"
