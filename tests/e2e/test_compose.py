"""The containerised demo exchange: docker-compose up, demo exits 0, the sync agents carry what may cross.

Needs a Docker engine (on these machines: ../shared/tools/docker-sandbox.sh, which
`.ci/run` runs); skipped with the reason where Docker cannot run.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from exchange.config import load_node

REPO = Path(__file__).resolve().parents[2]
TAXII = "application/taxii+json;version=2.1"
LOCAL_IMAGE = "local/python:3.11-bookworm"


def _compose_cmd() -> list[str] | None:
    if shutil.which("docker") is None:
        return None
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _why_not() -> str | None:
    cmd = _compose_cmd()
    if cmd is None:
        return "no docker CLI with compose on this machine"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine is running ({(info.stderr or info.stdout).strip().splitlines()[-1][:200]})"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack():
    reason = _why_not()
    if reason:
        pytest.skip(f"compose test skipped: {reason}")
    project = f"ctix{uuid.uuid4().hex[:8]}"
    env = dict(os.environ, US_PORT=str(_free_port()), ROK_PORT=str(_free_port()), SYNC_INTERVAL="1", COMPOSE_PROJECT_NAME=project)
    if subprocess.run(["docker", "image", "inspect", LOCAL_IMAGE], capture_output=True).returncode == 0:
        env.setdefault("PYTHON_IMAGE", LOCAL_IMAGE)
        env.setdefault("BUILD_NETWORK", "host")
    compose = _compose_cmd() + ["-p", project]  # type: ignore[operator]

    def run(*args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run(compose + list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {out.stderr[-3000:]}")
        return out

    try:
        run("build", timeout=900)
        run("up", "-d", timeout=600)
        yield run, env
    finally:
        logs = run("logs", "--no-color", check=False, timeout=120).stdout
        (REPO / ".pytest_cache").mkdir(exist_ok=True)
        (REPO / ".pytest_cache" / "compose-logs.txt").write_text(logs)
        run("down", "-v", "--remove-orphans", check=False, timeout=300)


def _container(run, service: str) -> str:
    return run("ps", "-q", service).stdout.strip()


def _secret(run, node: str, account: str) -> str:
    return run("exec", "-T", f"{node}-node", "cat", f"/secrets/{node}/{account}").stdout.strip()


@pytest.mark.compose
def test_demo_service_exits_0_with_the_leak_check_passed(stack):
    run, _env = stack
    container = _container(run, "demo")
    assert container, "the demo service did not start"
    waited = subprocess.run(["docker", "wait", container], capture_output=True, text=True, timeout=420)
    code = int(waited.stdout.strip() or "1")
    logs = run("logs", "--no-color", "demo").stdout
    assert code == 0, logs[-3000:]
    assert "Leak check passed" in logs


@pytest.mark.compose
def test_an_object_published_at_us_node_reaches_rok_node_and_a_red_one_does_not(stack, tmp_path):
    run, env = stack
    # the nodes serve HTTPS only; their certificates come from the demo CA in the secrets volume
    ca = tmp_path / "ca.crt"
    ca.write_text(run("exec", "-T", "us-node", "cat", "/secrets/pki/ca.crt").stdout)
    us = f"https://127.0.0.1:{env['US_PORT']}/us/"
    rok = f"https://127.0.0.1:{env['ROK_PORT']}/rok/"
    with pytest.raises(requests.ConnectionError):  # plain HTTP is not served
        requests.get(f"http://127.0.0.1:{env['US_PORT']}/taxii2/", timeout=10)
    us_auth = ("analyst", _secret(run, "us", "analyst"))
    rok_auth = ("analyst", _secret(run, "rok", "analyst"))
    own = load_node("us").config.collection("us-intel").id
    inbox = load_node("rok").config.collection("us-inbox").id
    creator = load_node("us").config.identity

    def indicator(marking: str, name: str) -> dict:
        return {
            "type": "indicator", "spec_version": "2.1", "id": f"indicator--{uuid.uuid4()}", "created_by_ref": creator,
            "created": "2026-11-24T00:00:00.000Z", "modified": "2026-11-24T00:00:00.000Z", "name": name,
            "pattern": "[domain-name:value = 'compose-test.exercise.example']", "pattern_type": "stix",
            "valid_from": "2026-11-24T00:00:00Z", "object_marking_refs": [marking],
        }

    green = indicator("marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb", "compose GREEN")
    red = indicator("marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1", "compose RED")
    resp = requests.post(
        f"{us}collections/{own}/objects/", data=orjson.dumps({"objects": [green, red]}),
        headers={"Accept": TAXII, "Content-Type": TAXII}, auth=us_auth, timeout=30, verify=str(ca),
    )
    assert resp.status_code == 202 and resp.json()["success_count"] == 2

    def at_rok(oid: str) -> int:
        return requests.get(
            f"{rok}collections/{inbox}/objects/{oid}/", headers={"Accept": TAXII}, auth=rok_auth, timeout=30, verify=str(ca)
        ).status_code

    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and at_rok(green["id"]) != 200:
        time.sleep(1)
    assert at_rok(green["id"]) == 200, "the GREEN object did not arrive through the sync agents"
    time.sleep(3)  # more sync cycles
    assert at_rok(red["id"]) == 404
