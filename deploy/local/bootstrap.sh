#!/usr/bin/env bash
# Creates .venv and installs ledgerflow with its dev extras; re-runs pip only when
# pyproject.toml changed. Resolves the Kafka jars (Maven Central) into the cache.
# Resolves Apicurio Registry (Maven Central) too, for the schema registry tests.
# Used by `make demo`, `make test` and .ci/run: nothing needs installing by hand.
# `--lake` also builds the local S3 store (SeaweedFS) the lake-sink tests start.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  "$PY" -m venv .venv
fi
stamp=.venv/.ledgerflow-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "bootstrap: installing Python packages (pip install -e '.[dev]')" >&2
  .venv/bin/python -m pip install -q --upgrade pip >&2
  .venv/bin/python -m pip install -q -e '.[dev]' >&2
  echo "$want" > "$stamp"
fi
# PostgreSQL server for the PostgreSQL sink's tests (Debian package; root installs it)
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing PostgreSQL (apt-get install postgresql)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
  else
    echo "bootstrap: PostgreSQL server binaries (initdb) not found; install the 'postgresql' package" >&2
  fi
fi
# Prometheus server + promtool for the monitoring tests (Debian package)
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Prometheus (apt-get install prometheus)" >&2
    apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >&2
  else
    echo "bootstrap: prometheus/promtool not found; install the 'prometheus' package" >&2
  fi
fi
for tool in java mvn; do
  command -v "$tool" >/dev/null || { echo "bootstrap: $tool is required (Java 17+ and Maven)" >&2; exit 1; }
done
.venv/bin/ledgerflow kafka resolve >&2
# Apicurio Registry (the schema registry of the registry tests and `ledgerflow registry
# up`): its runnable tarball from Maven Central, unpacked into the cache once (~110 MB)
.venv/bin/ledgerflow registry resolve >&2
# --lake (make test, CI): SeaweedFS, the S3 store of the lake-sink tests, built once from
# its Go module into the cache (about 4 minutes; `ledgerflow demo --sink s3` builds it
# on first use too)
if [ "${1:-}" = "--lake" ]; then
  .venv/bin/ledgerflow s3 resolve >&2
fi
