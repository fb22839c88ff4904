# PostgreSQL 17 from Debian 13 (trixie) packages in a debootstrap root; sourced.
# Debian 12 (the host) ships only PostgreSQL 15 and no PyPI wheel carries 17, but trixie has
# postgresql-17, postgresql-server-dev-17 and postgresql-17-pgvector (0.8.0). Its binaries
# need glibc 2.38+ (the host has 2.36), so the server, pg_regress and the build all run
# inside the root; clients on the host (pytest's psycopg) connect over TCP on 127.0.0.1.
#
#   pg17_setup         -> idempotent: debootstrap trixie minbase into $NUDGE_PG17_ROOT, install
#                         the packages inside, copy the host's local CA certificates in, and
#                         `cargo pgrx init --pg17` inside (the root's own HOME; the host's
#                         ~/.pgrx/config.toml is never touched). Each step is skipped when its
#                         result exists. Needs cargo-pgrx on the host (scripts/setup.sh).
#   pg17_run CMD...    -> run CMD inside the root (mounts made and unmade around it)
#   pg17_cargo ARGS... -> `cargo ARGS` inside the root, in the repository, with the host's Rust
#                         toolchain and cargo-pgrx (bind-mounted read-only), HOME and
#                         CARGO_HOME under /nudge in the root, CARGO_TARGET_DIR $NUDGE_PG17_TARGET
#   pg17_test [FILE]   -> on PostgreSQL 17: `cargo pgrx test pg17` (as postgres), the pg_regress
#                         suites (regress_tests picks them) on a server of its own in the root
#                         at a free port on 127.0.0.1, then the release build installed into the
#                         root's PostgreSQL and tests/python/test_scifact_e2e.py run from the
#                         host's venv against that server; appends a timing line to FILE if given
#
# Mounts (proc, sys, dev, the toolchain, the repository, the target dir) are made by pg17_mount
# and undone by an EXIT trap in the subshell that made them (pg17_run, pg17_test): a mount
# made by an outer call is left to that call. The repository and the target directory appear
# inside the root at the same absolute paths as on the host.
_pg17_scripts="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
. "$_pg17_scripts/env.sh"
. "$_pg17_scripts/pg.sh"     # regress_tests
: "${NUDGE_DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${NUDGE_DEBIAN_SECURITY_MIRROR=http://deb.debian.org/debian-security}"   # "" = none
: "${NUDGE_PG17_TARGET:=${CARGO_TARGET_DIR:-$(dirname "$_pg17_scripts")/target}/pg17}"
_pg17_repo="$(dirname "$_pg17_scripts")"
_pg17_bindir=/usr/lib/postgresql/17/bin
_pg17_pg_config=$_pg17_bindir/pg_config
_pg17_pkgs=(postgresql-17 postgresql-server-dev-17 postgresql-17-pgvector
            libclang-dev clang pkg-config build-essential ca-certificates sudo)
_pg17_mounts=()

# Host toolchain: the active rustup toolchain's bin dir (cargo, rustc) and the dir holding
# cargo-pgrx. Both are bind-mounted at their own paths, so neither may be a system directory.
_pg17_toolchain_bin() {
  local c
  c="$(cd "$_pg17_repo" && rustup which cargo)" || { echo "pg17: needs a rustup toolchain" >&2; return 1; }
  dirname "$(readlink -f "$c")"
}
_pg17_cargo_bin() {
  local d
  d="$(dirname "$(readlink -f "$(command -v cargo-pgrx)")")" || return 1
  case "$d" in /bin | /sbin | /usr/bin | /usr/sbin | /usr) echo "pg17: cargo-pgrx in $d, not mountable" >&2; return 1 ;; esac
  echo "$d"
}

# _pg17_bind SRC [ro]: bind-mount SRC at the same path inside the root.
_pg17_bind() {
  local src="$1" dst="$NUDGE_PG17_ROOT$1"
  mountpoint -q "$dst" && return 0
  mkdir -p "$dst"
  mount --bind "$src" "$dst"
  _pg17_mounts+=("$dst")
  if [ "${2:-}" = ro ]; then mount -o remount,bind,ro "$dst"; fi
}

pg17_mount() {
  local r="$NUDGE_PG17_ROOT" tc cb
  [ "$(id -u)" -eq 0 ] || { echo "pg17: needs root (chroot, mount)" >&2; return 1; }
  [ -x "$r/usr/bin/apt-get" ] || { echo "pg17: no root at $r (scripts/setup.sh)" >&2; return 1; }
  if ! mountpoint -q "$r/proc"; then mount -t proc proc "$r/proc"; _pg17_mounts+=("$r/proc"); fi
  if ! mountpoint -q "$r/sys"; then mount -t sysfs sysfs "$r/sys"; _pg17_mounts+=("$r/sys"); fi
  if ! mountpoint -q "$r/dev"; then
    mount --rbind /dev "$r/dev"; mount --make-rslave "$r/dev"; _pg17_mounts+=("$r/dev")
  fi
  cp -L /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
  tc="$(_pg17_toolchain_bin)" || return 1
  [ -d "$(dirname "$tc")/lib/rustlib" ] || { echo "pg17: $tc is no rustup toolchain" >&2; return 1; }
  _pg17_bind "$(dirname "$tc")" ro
  if cb="$(_pg17_cargo_bin)"; then _pg17_bind "$cb" ro; fi
  _pg17_bind "$_pg17_repo"
  # The host's downloaded crates (same Cargo.lock): no second download inside the root.
  local reg="${CARGO_HOME:-$HOME/.cargo}/registry"
  if [ -d "$reg" ] && ! mountpoint -q "$r/nudge/cargo/registry"; then
    mkdir -p "$r/nudge/cargo/registry"
    mount --bind "$reg" "$r/nudge/cargo/registry"
    _pg17_mounts+=("$r/nudge/cargo/registry")
  fi
  mkdir -p "$NUDGE_PG17_TARGET"
  case "$NUDGE_PG17_TARGET/" in "$_pg17_repo"/*) ;; *) _pg17_bind "$NUDGE_PG17_TARGET" ;; esac
}

# Unmount what this shell mounted, newest first.
pg17_umount() {
  local i m
  for ((i = ${#_pg17_mounts[@]} - 1; i >= 0; i--)); do
    m="${_pg17_mounts[i]}"
    umount -R "$m" 2>/dev/null || umount -R -l "$m" || echo "pg17: could not unmount $m" >&2
  done
  _pg17_mounts=()
}

# _pg17_chroot CMD...: CMD in the root with a clean environment (no mounts made here).
_pg17_chroot() {
  chroot "$NUDGE_PG17_ROOT" /usr/bin/env -i \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 \
    HOME=/root USER=root TERM="${TERM:-dumb}" "$@"
}

pg17_run() (
  _pg17_mounts=()
  trap pg17_umount EXIT
  trap 'exit 130' INT TERM
  pg17_mount
  _pg17_chroot "$@"
)

# _pg17_cargo_in ARGS...: cargo inside the root (mounts must be up).
_pg17_cargo_in() {
  local tc cb
  tc="$(_pg17_toolchain_bin)"; cb="$(_pg17_cargo_bin)"
  _pg17_chroot env HOME=/nudge/home CARGO_HOME=/nudge/cargo CARGO_TARGET_DIR="$NUDGE_PG17_TARGET" \
    PATH="$tc:$cb:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
    ${RUST_BACKTRACE:+RUST_BACKTRACE=$RUST_BACKTRACE} \
    sh -c 'cd "$0" && exec cargo "$@"' "$_pg17_repo" "$@"
}

pg17_cargo() (
  _pg17_mounts=()
  trap pg17_umount EXIT
  trap 'exit 130' INT TERM
  pg17_mount
  _pg17_cargo_in "$@"
)

_pg17_have_pkgs() {
  local out
  out="$(chroot "$NUDGE_PG17_ROOT" dpkg-query -W -f='${db:Status-Abbrev}\n' "${_pg17_pkgs[@]}" 2>/dev/null)" || return 1
  [ "$(grep -c '^ii' <<<"$out")" -eq "${#_pg17_pkgs[@]}" ]
}

pg17_setup() {
  local r="$NUDGE_PG17_ROOT" start part cacerts=/usr/local/share/ca-certificates line
  if [ ! -x "$r/usr/bin/apt-get" ]; then
    command -v debootstrap >/dev/null || {
      echo "==> pg17: apt-get install debootstrap"
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    }
    start=$SECONDS
    part="$r.partial"
    if [ -e "$part" ]; then    # an interrupted run: drop it (never across a mount)
      findmnt -rn -o TARGET | grep -F "$part/" | sort -r | while read -r line; do umount -l "$line"; done
      rm -rf --one-file-system "$part"
    fi
    echo "==> pg17: debootstrap --variant=minbase trixie $r ($NUDGE_DEBIAN_MIRROR)"
    mkdir -p "$(dirname "$r")"
    debootstrap --variant=minbase trixie "$part" "$NUDGE_DEBIAN_MIRROR" >"$part.log" 2>&1 \
      || { tail -30 "$part.log" >&2; echo "pg17: debootstrap failed, log $part.log" >&2; return 1; }
    rm -f "$part.log"
    mv "$part" "$r"
    echo "    debootstrap $((SECONDS - start)) s"
  fi

  if ! _pg17_have_pkgs; then
    start=$SECONDS
    echo "==> pg17: apt-get install ${_pg17_pkgs[*]} (in the root)"
    cat >"$r/etc/apt/sources.list" <<EOF
deb $NUDGE_DEBIAN_MIRROR trixie main
deb $NUDGE_DEBIAN_MIRROR trixie-updates main
EOF
    [ -z "$NUDGE_DEBIAN_SECURITY_MIRROR" ] \
      || echo "deb $NUDGE_DEBIAN_SECURITY_MIRROR trixie-security main" >>"$r/etc/apt/sources.list"
    # No services start in the root (no init); the "17 main" cluster the package creates is
    # never used (the tests make their own data directories).
    printf '#!/bin/sh\nexit 101\n' >"$r/usr/sbin/policy-rc.d"; chmod 755 "$r/usr/sbin/policy-rc.d"
    pg17_run sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null && apt-get clean' \
      sh "${_pg17_pkgs[@]}"
    echo "    apt-get install $((SECONDS - start)) s"
  fi

  # crates.io over TLS from inside needs the CAs the host added locally (a TLS-inspecting
  # proxy's, where there is one).
  if [ -d "$cacerts" ] && ! diff -rq "$cacerts" "$r$cacerts" >/dev/null 2>&1; then
    echo "==> pg17: local CA certificates into the root"
    rm -rf "${r:?}$cacerts"; cp -a "$cacerts" "$r$cacerts"
    _pg17_chroot update-ca-certificates >/dev/null
  fi

  line="pg17 = \"$_pg17_pg_config\""
  if ! grep -qxF "$line" "$r/nudge/home/.pgrx/config.toml" 2>/dev/null; then
    echo "==> pg17: cargo pgrx init --pg17 $_pg17_pg_config (in the root's HOME)"
    mkdir -p "$r/nudge/home" "$r/nudge/cargo"
    pg17_cargo pgrx init --pg17 "$_pg17_pg_config" >/dev/null
  fi
}

# _pg17_as_pg CMD...: CMD inside the root as its postgres user.
_pg17_as_pg() { _pg17_chroot runuser -u postgres -- "$@"; }

# The steps of pg17_test; they run with the mounts up and the repository as cwd, and share
# the variables _pg17_datadir and _pg17_port (the test server, a path inside the root).
_pg17_pgrx_test() {
  local r="$NUDGE_PG17_ROOT" pgdata
  pgdata="$(mktemp -d "$r/tmp/nudge-pgrx-test17.XXXXXX")"; pgdata="${pgdata#"$r"}"
  _pg17_chroot chown postgres "$pgdata"
  _pg17_cargo_in pgrx test pg17 --runas postgres --pgdata "$pgdata" --no-default-features --features pg17
  rm -rf --one-file-system "${r:?}$pgdata"
}

# A server of our own inside the root (the package's "17 main" cluster is not used).
_pg17_server_up() {
  local r="$NUDGE_PG17_ROOT"
  _pg17_datadir="$(mktemp -d "$r/tmp/nudge-test-pg17.XXXXXX")"; _pg17_datadir="${_pg17_datadir#"$r"}"
  _pg17_chroot chown postgres "$_pg17_datadir"; chmod 700 "$r$_pg17_datadir"
  _pg17_as_pg $_pg17_bindir/initdb -D "$_pg17_datadir" -U postgres --auth=trust --encoding=UTF8 --locale=C \
    >"$r$_pg17_datadir.initdb.log" 2>&1 || { cat "$r$_pg17_datadir.initdb.log"; return 1; }
  _pg17_port="${NUDGE_PG_PORT:-$(free_port)}"
  _pg17_as_pg $_pg17_bindir/pg_ctl -D "$_pg17_datadir" -l "$_pg17_datadir/server.log" -w -t 60 \
    -o "-p $_pg17_port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$_pg17_datadir -c max_connections=50" \
    start >/dev/null || { cat "$r$_pg17_datadir/server.log"; return 1; }
}

_pg17_server_down() {
  [ -n "${_pg17_datadir:-}" ] && [ -f "$NUDGE_PG17_ROOT$_pg17_datadir/postmaster.pid" ] || return 0
  _pg17_as_pg $_pg17_bindir/pg_ctl -D "$_pg17_datadir" -m fast -w stop >/dev/null 2>&1 || true
}

_pg17_psql() { _pg17_chroot $_pg17_bindir/psql -X -A -t -q -h 127.0.0.1 -p "$_pg17_port" -U postgres "$@"; }

# _pg17_regress TESTS...: pg_regress (the root's, from postgresql-server-dev-17) on the server.
_pg17_regress() {
  local r="$NUDGE_PG17_ROOT" out pgxs
  out="$(mktemp -d "$r/tmp/nudge-regress17.XXXXXX")"; out="${out#"$r"}"
  pgxs="$(dirname "$(_pg17_chroot $_pg17_pg_config --pgxs)")/.."
  if ! _pg17_chroot "$pgxs/test/regress/pg_regress" \
        --inputdir="$_pg17_repo/tests/regress" --outputdir="$out" --bindir="$_pg17_bindir" \
        --host=127.0.0.1 --port="$_pg17_port" --user=postgres --dbname=nudge_regress "$@"; then
    head -200 "$r$out/regression.diffs" 2>/dev/null || true
    echo "pg_regress failed on PostgreSQL 17; output in $r$out" >&2
    return 1
  fi
  rm -rf --one-file-system "${r:?}$out"
}

# End to end on what users install: the release build, loaded by new sessions of the server;
# pytest from the host's venv over TCP.
_pg17_install_release() {
  _pg17_cargo_in pgrx install --release --pg-config "$_pg17_pg_config" --no-default-features --features pg17 >/dev/null
}
_pg17_e2e() {
  PGHOST=127.0.0.1 PGPORT="$_pg17_port" PGUSER=postgres NUDGE_REQUIRE_PG=1 \
    "$NUDGE_VENV/bin/python" -m pytest tests/python/test_scifact_e2e.py -q -p no:cacheprovider "$@"
}

pg17_test() (
  set -euo pipefail
  # No `local`s: the EXIT trap runs after the function's scope is gone (this is a subshell).
  timings_file="${1:-}"
  _pg17_mounts=(); _pg17_datadir=""
  trap '_pg17_server_down; pg17_umount' EXIT
  trap 'exit 130' INT TERM
  pg17_mount
  cd "$_pg17_repo"

  echo "==> PostgreSQL 17 ($(_pg17_chroot $_pg17_pg_config --version), Debian 13 root $NUDGE_PG17_ROOT): cargo pgrx test pg17 (target dir ${NUDGE_PG17_TARGET#"$PWD"/})"
  start=$SECONDS
  _pg17_pgrx_test
  t_test=$((SECONDS - start))

  start=$SECONDS
  _pg17_server_up
  vec="$(_pg17_psql -d postgres -c \
        "SELECT coalesce((SELECT default_version FROM pg_available_extensions WHERE name = 'vector'), '')")"
  echo "==> PostgreSQL 17: SQL regression tests (pg_regress), pgvector: ${vec:-not available}"
  tests="$(regress_tests "$vec")"
  # shellcheck disable=SC2086
  _pg17_regress $tests
  t_regress=$((SECONDS - start))

  echo "==> PostgreSQL 17: cargo pgrx install --release (for the end-to-end test)"
  start=$SECONDS
  _pg17_install_release
  t_install=$((SECONDS - start))
  echo "==> end-to-end (pytest tests/python/test_scifact_e2e.py, PostgreSQL 17 on port $_pg17_port)"
  start=$SECONDS
  rc=0
  _pg17_e2e || rc=$?
  t_e2e=$((SECONDS - start))
  line="PostgreSQL 17 (Debian 13 root, pgvector ${vec:-none}): cargo pgrx test ${t_test} s, pg_regress ${t_regress} s [$(echo $tests)], install --release ${t_install} s, e2e pytest ${t_e2e} s"
  [ -z "$timings_file" ] || echo "$line" >>"$timings_file"
  echo "    $line"
  [ "$rc" -eq 0 ] || { echo "end-to-end tests failed on PostgreSQL 17; server data in $NUDGE_PG17_ROOT$_pg17_datadir" >&2; exit "$rc"; }
  _pg17_server_down
  rm -rf --one-file-system "${NUDGE_PG17_ROOT:?}$_pg17_datadir" "$NUDGE_PG17_ROOT$_pg17_datadir.initdb.log"
)
