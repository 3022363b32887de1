# cti-exchange node image: one image for the nodes, the sync agents and the demo.
# The base image comes from a build argument so that machines without registry
# access can build on a local image (see ../shared/tools/docker-sandbox.sh).
ARG PYTHON_IMAGE=python:3.12-slim

# --- optional PostgreSQL server for the `postgres` compose profile (Debian's package) ---
FROM ${PYTHON_IMAGE} AS postgres
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql \
 && rm -rf /var/lib/apt/lists/* \
 && usermod -u 10001 postgres \
 && mkdir -p /var/lib/postgresql/data /run/postgresql \
 && chown -R postgres:postgres /var/lib/postgresql /run/postgresql
# the same uid as the node image's user, so it can read its password in the secrets volume
USER postgres
ENV PGDATA=/var/lib/postgresql/data
# First start: a cluster whose superuser password is the deployment's secret
# (scram-sha-256 over the compose network); then the server in the foreground.
CMD ["sh", "-c", "set -e; bin=$(ls -d /usr/lib/postgresql/*/bin | tail -1); if [ ! -s \"$PGDATA/PG_VERSION\" ]; then \"$bin/initdb\" -D \"$PGDATA\" -U postgres --auth-local=peer --auth-host=scram-sha-256 --pwfile=\"$DB_PASSWORD_FILE\" >/dev/null; echo 'host all all 0.0.0.0/0 scram-sha-256' >> \"$PGDATA/pg_hba.conf\"; fi; exec \"$bin/postgres\" -D \"$PGDATA\" -c listen_addresses='*'"]
HEALTHCHECK --interval=3s --timeout=3s --retries=30 CMD ["sh", "-c", "pg_isready -q -h 127.0.0.1"]

# --- the node image -------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS node

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    CTI_EXCHANGE_COLLECTIONS=/app/collections \
    CTI_EXCHANGE_POLICIES=/app/policies

WORKDIR /app
# dependencies first (cached while only the code changes)
COPY pyproject.toml README.md ./
COPY exchange/__init__.py exchange/errors.py exchange/
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/venv/bin/pip install --no-cache-dir .
COPY exchange ./exchange
COPY collections ./collections
COPY policies ./policies
RUN /opt/venv/bin/pip install --no-cache-dir --no-deps --force-reinstall . \
 && useradd --system --uid 10001 --create-home --home-dir /home/cti cti \
 && mkdir -p /data /secrets \
 && chown cti:cti /data /secrets

USER cti
VOLUME ["/data"]
EXPOSE 6100

# GET /healthz (no credentials) answers 200 {"status": "ok"} while the node's database
# answers and its data folder has room, 503 naming the failing check otherwise.  A node serving HTTPS
# (CTI_EXCHANGE_CERTFILE set) is checked over HTTPS, its certificate verified
# against CTI_EXCHANGE_CA_FILE (the demo CA in the secrets volume).
HEALTHCHECK --interval=5s --timeout=4s --start-period=10s --retries=12 \
  CMD ["python3", "-c", "import os,ssl,sys,urllib.request\ntls=bool(os.environ.get('CTI_EXCHANGE_CERTFILE'))\nctx=ssl.create_default_context(cafile=os.environ.get('CTI_EXCHANGE_CA_FILE') or None) if tls else None\ntry:\n  r=urllib.request.urlopen(('https' if tls else 'http')+'://127.0.0.1:6100/healthz',timeout=3,context=ctx); sys.exit(0 if r.status==200 else 1)\nexcept Exception:\n  sys.exit(1)"]

ENTRYPOINT ["cti-exchange"]
CMD ["--help"]
