"""The README's by-hand blocks run as written, in order, in a fresh copy of the repository.

Which blocks: those right after a line that is exactly ``<!-- readme-test: run -->`` (an HTML comment,
invisible on the rendered page). Mark a block of your own README section that way to have it run here;
unmarked blocks (the quick start's installs, docker compose) are not run. The blocks share one folder
(a copy of the repository's files as checked out, with ``.venv`` linked to the running virtualenv), so a
later block sees what an earlier one made; background processes (``serve ... &``) keep running until the
end, when their process group is stopped.

Changed from the README: ports 6101/6102 become free ports. ``REQUESTS_CA_BUNDLE`` and ``CURL_CA_BUNDLE``
point at the public CA bundle, as on many workstations: the TLS examples must work all the same.
A bash block runs under ``bash -e -o pipefail``; if its last line is ``# prints X``, its output ends with X.
A python block's last line, an expression followed by ``# VALUE``, must evaluate to VALUE.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
MARKER = "<!-- readme-test: run -->"
_FENCE = re.compile(r"```(\w+)\n(.*?)\n```", re.S)


def marked_blocks(text: str) -> list[tuple[str, str]]:
    """``(language, code)`` of every fenced block right after a marker line, in order."""
    lines = text.splitlines()
    blocks = []
    for n, line in enumerate(lines):
        if line.strip() == MARKER:
            rest = "\n".join(lines[n + 1:])
            m = _FENCE.match(rest)
            assert m, f"README line {n + 1}: {MARKER} is not followed by a fenced code block"
            blocks.append((m.group(1), m.group(2)))
    return blocks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_repository(dest: Path) -> None:
    """The repository's files (tracked and new, as checked out; not ignored ones such as .venv or data/)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True)
    for rel in listed.stdout.decode().split("\0"):
        if rel and (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    (dest / ".venv").symlink_to(Path(sys.prefix))


_EVAL_LAST = """
import ast, sys
src = open(sys.argv[1]).read()
tree = ast.parse(src)
last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
exec(compile(tree, "block", "exec"), ns := {})
if last is not None:
    print(repr(eval(compile(ast.Expression(last.value), "block", "eval"), ns)))
"""


def _stop_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)


def test_the_readme_marks_the_by_hand_blocks():
    blocks = marked_blocks((REPO / "README.md").read_text(encoding="utf-8"))
    assert [lang for lang, _ in blocks][:3] == ["bash", "python", "python"]
    assert "account add us analyst" in blocks[0][1] and "source .venv/bin/activate" in blocks[0][1]


@pytest.mark.slow
def test_every_marked_readme_block_runs_as_written(tmp_path):
    import certifi

    work = tmp_path / "clone"
    work.mkdir()
    _copy_repository(work)
    ports = {"6101": str(_free_port()), "6102": str(_free_port())}
    env = dict(os.environ, REQUESTS_CA_BUNDLE=certifi.where(), CURL_CA_BUNDLE=certifi.where())
    env.pop("VIRTUAL_ENV", None)
    env.pop("CTI_EXCHANGE_COLLECTIONS", None)
    groups: list[subprocess.Popen] = []
    try:
        for n, (lang, code) in enumerate(marked_blocks((work / "README.md").read_text(encoding="utf-8")), start=1):
            for old, new in ports.items():
                code = code.replace(old, new)
            script = work / f"block-{n}.{'sh' if lang == 'bash' else 'py'}"
            script.write_text(code + "\n", encoding="utf-8")
            out_path, err_path = tmp_path / f"block-{n}.out", tmp_path / f"block-{n}.err"
            cmd = ["bash", "-e", "-o", "pipefail", str(script)] if lang == "bash" else [str(work / ".venv/bin/python"), "-c", _EVAL_LAST, str(script)]
            with open(out_path, "w") as out, open(err_path, "w") as err:  # files, not pipes: background servers keep them open
                proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True)
                groups.append(proc)
                code_ = proc.wait(timeout=240)
            stdout, stderr = out_path.read_text(), err_path.read_text()
            assert code_ == 0, f"README block {n} ({lang}) exited {code_}:\n{code}\n--- stdout\n{stdout[-3000:]}\n--- stderr\n{stderr[-3000:]}"
            last = code.rstrip().splitlines()[-1]
            if lang == "bash" and last.startswith("# prints "):
                assert stdout.rstrip().splitlines()[-1] == last[len("# prints "):], f"block {n}: {stdout[-2000:]}"
            if lang == "python" and "#" in last:
                assert stdout.strip() == last.split("#", 1)[1].strip(), f"block {n}: {stdout[-2000:]} {stderr[-2000:]}"
            if n == 1:
                assert re.search(r"^sync us<->rok: pushed \d+, \d+ acknowledged", stdout, re.M), stdout
    finally:
        for proc in groups:
            _stop_group(proc)
