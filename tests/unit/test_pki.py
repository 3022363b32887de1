"""``cti-exchange pki init``: the demo CA, node server certificates and partner client certificates."""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
import stat

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from exchange.cli import main
from exchange.config import collections_dir, load_node
from exchange.errors import ConfigError
from exchange.node.pki import init_pki
from exchange.node.tls import normalise_subject


def _cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_a_ca_server_certificates_and_partner_client_certificates(tmp_path):
    out = CliRunner().invoke(main, ["pki", "init", str(tmp_path / "pki"), "--days", "30"])
    assert out.exit_code == 0, out.output
    d = tmp_path / "pki"
    ca = _cert(d / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for node in ("us", "rok"):
        server = _cert(d / f"{node}.crt")
        server.verify_directly_issued_by(ca)
        names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert {"localhost", f"{node}-node", node} <= set(names.get_values_for_type(x509.DNSName))
        assert ipaddress.ip_address("127.0.0.1") in names.get_values_for_type(x509.IPAddress)
        usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert ExtendedKeyUsageOID.SERVER_AUTH in usage
        assert server.not_valid_after_utc - server.not_valid_before_utc <= dt.timedelta(days=30)
    # one client certificate per account that node.yaml maps to a certificate subject
    for node in ("us", "rok"):
        mapped = [a for a in load_node(node).config.accounts if a.certificate_subject]
        assert {a.name for a in mapped} >= {"jp"} and len(mapped) == 2
        for acct in mapped:
            client = _cert(d / f"{acct.name}@{node}.crt")
            client.verify_directly_issued_by(ca)
            assert client.subject.rfc4514_string() == acct.certificate_subject
            assert ExtendedKeyUsageOID.CLIENT_AUTH in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            assert ExtendedKeyUsageOID.SERVER_AUTH not in client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert (d / "rok@us.crt").is_file() and (d / "us@rok.crt").is_file()
    for key in d.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    assert not list(d.glob("*.tmp"))


def test_init_refuses_to_overwrite_without_force(tmp_path):
    d = tmp_path / "pki"
    runner = CliRunner()
    assert runner.invoke(main, ["pki", "init", str(d)]).exit_code == 0
    before = (d / "ca.crt").read_bytes()
    again = runner.invoke(main, ["pki", "init", str(d)])
    assert again.exit_code == 1
    assert again.output.strip().splitlines() == [f"Error: {d / 'ca.crt'} already exists; use --force to replace the PKI in {d}"]
    assert (d / "ca.crt").read_bytes() == before
    kept = runner.invoke(main, ["pki", "init", str(d), "--keep-existing"])
    assert kept.exit_code == 0 and "kept" in kept.output
    assert (d / "ca.crt").read_bytes() == before
    forced = runner.invoke(main, ["pki", "init", str(d), "--force"])
    assert forced.exit_code == 0
    assert (d / "ca.crt").read_bytes() != before


def test_keep_existing_still_refuses_a_partial_pki(tmp_path):
    d = tmp_path / "pki"
    init_pki(d)
    (d / "rok@us.key").unlink()
    with pytest.raises(ConfigError, match="already exists"):
        init_pki(d, keep_existing=True)


def test_only_the_named_nodes_and_extra_names(tmp_path):
    written = init_pki(tmp_path, ["us"], extra_names=["cti.example.org", "192.0.2.10"])
    assert {p.name for p in written} == {"ca.crt", "ca.key", "us.crt", "us.key", "rok@us.crt", "rok@us.key", "jp@us.crt", "jp@us.key",
                                         "us-signing.crt", "us-signing.key"}
    names = _cert(tmp_path / "us.crt").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "cti.example.org" in names.get_values_for_type(x509.DNSName)
    assert ipaddress.ip_address("192.0.2.10") in names.get_values_for_type(x509.IPAddress)


def test_certificate_subject_is_normalised_and_checked_in_node_yaml(tmp_path):
    assert normalise_subject(" CN=rok@us ") == "CN=rok@us"
    assert normalise_subject("CN=rok@us,O=ROK CERT") == "CN=rok@us,O=ROK CERT"
    for bad in ("rok@us", "", "cn=rok@us"):
        with pytest.raises(ValueError):
            normalise_subject(bad)
    node_dir = tmp_path / "us"
    node_dir.mkdir()
    shutil.copy(collections_dir() / "identities.json", tmp_path / "identities.json")
    text = (collections_dir() / "us" / "node.yaml").read_text()
    (node_dir / "node.yaml").write_text(text.replace("certificate_subject: CN=jp@us", "certificate_subject: jp at us"))
    with pytest.raises(ConfigError, match=r"node\.yaml:\d+: accounts\.1\.certificate_subject: .*RFC 4514"):
        load_node(str(node_dir))
    (node_dir / "node.yaml").write_text(text.replace("certificate_subject: CN=jp@us", "certificate_subject: CN=rok@us"))
    with pytest.raises(ConfigError, match=r"accounts\.1\.certificate_subject: certificate subject 'CN=rok@us' is already the account 'rok'"):
        load_node(str(node_dir))
