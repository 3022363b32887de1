"""The node's gunicorn master, kept lean: it imports gunicorn and this module, never the web stack.

``cti-exchange serve`` checks the node in its own process (configuration, database, migrations,
accounts), binds the address (a port in use is one line, not gunicorn's retries), and then replaces
itself with ``python -m exchange.node.master API_ROOT`` (``exec_master``, the spec in the environment;
same process id, same signals).
The workers that master forks import the app themselves, from the factory the spec names
(``module:function`` with its arguments), and wrap it with ``admit_from_the_head``.

Before, the master kept every module the checks had imported (Flask, medallion, SQLAlchemy, Alembic,
stix2, the policy engine) for as long as the node ran: 85 MB of resident memory, 40 MB of it its own
(issue 21: server memory). Now it holds about 25 MB.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import socket
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from exchange.errors import ExchangeError
from exchange.node.worker import DEFAULT_REQUEST_TIMEOUT, ConnectionBoard, worker_class

__all__ = ["MasterSpec", "exec_master", "listening_socket", "serve"]

SPEC_ENV = "CTI_EXCHANGE_MASTER_SPEC"


@dataclass
class MasterSpec:
    """What the lean master needs: the bound socket, gunicorn's settings and the app factory to call in each worker."""

    fd: int
    api_root: str
    factory: str  # "module:function", called in each worker with ``factory_args``/``factory_kwargs``; returns an app factory
    factory_args: list = field(default_factory=list)
    factory_kwargs: dict = field(default_factory=dict)
    workers: int = 1
    threads: int = 4
    certfile: str | None = None
    keyfile: str | None = None
    client_ca: str | None = None
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    log_format: str = "text"


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (handed to gunicorn), or a one-line ``ExchangeError``.

    gunicorn binding the address itself would log a dozen lines and retry for five seconds
    when the port is taken.
    """
    import errno

    try:
        family, kind, proto, _name, address = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ExchangeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn does
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(address)
        sock.listen(2048)  # gunicorn's default backlog
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ExchangeError(f"port {port} on {host} is in use") from None
        raise ExchangeError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


def exec_master(spec: MasterSpec) -> None:
    """Replace this process with the lean master serving ``spec`` (never returns)."""
    os.set_inheritable(spec.fd, True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.environ[SPEC_ENV] = orjson.dumps(asdict(spec)).decode()  # not on the command line: `ps` shows only the api_root
    os.execv(sys.executable, [sys.executable, "-m", "exchange.node.master", spec.api_root])


def serve(spec: MasterSpec, out: Any = None) -> None:
    """Run gunicorn on ``spec.fd`` in this process; print the API root URL once every worker serves.

    ``request_timeout``: seconds a client has to send each request (head and body) from its first
    bytes; later it is answered 408 and disconnected (``exchange.node.worker``). ``certfile``/``keyfile``:
    HTTPS only; ``client_ca``: also verify client certificates against that CA bundle (mutual TLS; see
    ``exchange.node.tls.server_context``).
    """
    from gunicorn.app.base import BaseApplication

    from exchange.node.logs import configure_logging, prepare_multiprocess

    out = out or sys.stdout
    configure_logging(spec.log_format)  # before gunicorn forks: every worker logs the same way (access lines at INFO)
    prepare_multiprocess()  # every worker's counters in one folder: /metrics adds them up, whichever worker answers
    scheme = "https" if spec.certfile else "http"

    # the URL is printed once every worker has built its app (each imports the web stack itself): a client
    # that starts on it finds all of them accepting, not the first one ready taking every connection
    ready_r, ready_w = os.pipe()
    os.set_blocking(ready_w, False)  # a worker restarted later writes into a pipe nobody reads any more

    def worker_ready(_worker: Any) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(ready_w, b".")

    def when_ready(server: Any) -> None:
        addresses = [sock.sock.getsockname()[:2] for sock in server.LISTENERS]

        def announce() -> None:
            booted = 0
            while booted < spec.workers:
                chunk = os.read(ready_r, 64)
                if not chunk:
                    return
                booted += len(chunk)
            for h, p in addresses:
                print(f"API root: {scheme}://{h}:{p}/{spec.api_root}/", file=out, flush=True)
                print(f"Discovery: {scheme}://{h}:{p}/taxii2/", file=out, flush=True)

        threading.Thread(target=announce, name="cti-exchange-announce", daemon=True).start()

    # each worker's count of connections, for spreading keep-alive clients (room for workers replaced meanwhile)
    board = ConnectionBoard(2 * spec.workers + 2)
    options: dict[str, Any] = {
        "bind": f"fd://{spec.fd}",  # gunicorn takes the descriptor over
        "workers": spec.workers,
        "threads": spec.threads,
        "worker_class": worker_class(spec.request_timeout, board),  # gthread with a request deadline
        "pre_fork": lambda server, worker: board.assign(worker, server.WORKERS.values()),
        "child_exit": lambda _server, worker: board.release(worker),
        "timeout": 60,
        "graceful_timeout": 10,
        "keepalive": 5,
        "when_ready": when_ready,
        "post_worker_init": worker_ready,
        "accesslog": None,
        "loglevel": "warning",
        "proc_name": f"cti-exchange-{spec.api_root}",
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
    }
    if spec.certfile:
        contexts: dict[int, Any] = {}

        def ssl_context(_conf: Any, _default: Any) -> Any:
            # gunicorn asks for a context per connection: build it once per worker process
            pid = os.getpid()
            if pid not in contexts:
                from exchange.node.tls import server_context

                contexts.clear()
                contexts[pid] = server_context(spec.certfile, spec.keyfile, spec.client_ca)
            return contexts[pid]

        options.update({"certfile": spec.certfile, "keyfile": spec.keyfile, "ssl_context": ssl_context})
        if spec.client_ca:
            options["ca_certs"] = spec.client_ca

    class _App(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                self.cfg.set(key, value)

        def load(self) -> Any:  # in each worker, after the fork: the web stack is imported here
            from exchange.node.server import admit_from_the_head

            module, _, name = spec.factory.partition(":")
            make = getattr(importlib.import_module(module), name)
            return admit_from_the_head(make(*spec.factory_args, **spec.factory_kwargs)())

    _App().run()


def main() -> None:
    """``python -m exchange.node.master API_ROOT`` with the JSON of a ``MasterSpec`` in ``CTI_EXCHANGE_MASTER_SPEC``, as ``exec_master`` runs it."""
    raw = os.environ.pop(SPEC_ENV, None)  # the workers and anything they start do not inherit it
    if raw is None:
        raise SystemExit(f"{SPEC_ENV} is not set: this process is started by `cti-exchange serve`")
    serve(MasterSpec(**orjson.loads(raw)))


if __name__ == "__main__":
    main()
