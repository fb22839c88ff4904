#!/usr/bin/env bash
# Package test (issue 19): the .deb packages of scripts/package.sh install, work and uninstall
# on the PostgreSQL they are for:
#   15  postgresql-15-nudge into Debian 12's postgresql-15 on the host
#   17  postgresql-17-nudge into Debian 13's postgresql-17 in the debootstrap root (scripts/pg17.sh)
# For each: `apt-get install ./postgresql-NN-nudge_...deb` (dependencies from what is installed,
# nothing downloaded), dpkg -L / dpkg -V, a private server (its own data directory and a free
# port, as postgres), CREATE EXTENSION nudge, a fit on a small real[] table, nudge_revert
# restores every byte, DROP EXTENSION; then `apt-get remove`: every file of the package is
# gone and dpkg no longer lists it as installed.
#
#   scripts/package_test.sh [--debug | --release] [MAJOR...]    (MAJOR: 15, 17; default both)
#
# --debug (the default; scripts/test.sh uses it in CI) packages the debug builds, which reuse
# most of what `cargo pgrx test` built in target/pg15 and target/pg17; --release tests the
# release packages (a release build for 15 and 17 first).
# `cargo pgrx test` / `cargo pgrx install` leave nudge files, owned by no package, in those
# servers' directories; they are set aside before the install and put back after the removal,
# so the package test leaves both trees as it found them. Needs root (apt-get, chroot).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh
. scripts/pg17.sh

flag=--debug
majors=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) flag=--debug ;;
    --release) flag="" ;;
    15 | 17) majors+=("$1") ;;
    *) echo "package_test.sh: unknown argument '$1' ([--debug|--release] [15] [17])" >&2; exit 2 ;;
  esac
  shift
done
[ ${#majors[@]} -gt 0 ] || majors=(15 17)
[ "$(id -u)" -eq 0 ] || { echo "package_test.sh: needs root (apt-get, chroot)" >&2; exit 1; }

# The names scripts/package.sh gives the packages.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
deb_version="$version-${NUDGE_DEB_REVISION:-1}${flag:+~debug}"
arch="$(dpkg --print-architecture)"
out="${CARGO_TARGET_DIR:-$PWD/target}/packages"
timings=()

start=$SECONDS
# shellcheck disable=SC2086
bash scripts/package.sh $flag "${majors[@]}"
timings+=("package.sh ${flag:+$flag }${majors[*]}: $((SECONDS - start)) s")

work="$(mktemp -d /tmp/nudge-package-test.XXXXXX)"
chmod 755 "$work"
trap 'rm -rf "$work"' EXIT

# The check, the same on every server: psql -X -A -t -q prints exactly $work/expected.
cat >"$work/test.sql" <<'EOF'
\set ON_ERROR_STOP on
SET client_min_messages = warning;
CREATE EXTENSION nudge;
SET nudge.progress = off;
SELECT 'version ' || extversion FROM pg_extension WHERE extname = 'nudge';
-- 300 documents in 8 dimensions; 60 queries, each relevant to one document (tests/regress nudge_fit)
CREATE TABLE docs AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.37 + j)::real FROM generate_series(1, 8) j) AS embedding
  FROM generate_series(1, 300) i;
ALTER TABLE docs ADD PRIMARY KEY (id);
CREATE TABLE q AS
SELECT k AS id,
       ARRAY(SELECT sin((k * 7 % 300 + 1) * j * 0.37 + j + 0.4 * cos(k * j))::real FROM generate_series(1, 8) j) AS embedding
  FROM generate_series(1, 60) k;
CREATE TABLE qrels AS
SELECT k AS query_id, k * 7 % 300 + 1 AS doc_id, 1 AS score FROM generate_series(1, 60) k;
-- the binary form of every vector
SELECT md5(string_agg(id::text || ':' || encode(array_send(embedding), 'hex'), ',' ORDER BY id)) AS before FROM docs \gset
SELECT ndcg AS ndcg_before FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels') \gset
SELECT records_changed AS changed FROM nudge_fit('docs', 'embedding', 'q', 'qrels', gamma => 0.2) \gset
SELECT 'fit changed rows ' || (:changed > 0);
SELECT 'vectors changed ' || (md5(string_agg(id::text || ':' || encode(array_send(embedding), 'hex'), ',' ORDER BY id)) <> :'before') FROM docs;
SELECT 'ndcg improved ' || (ndcg > :ndcg_before) FROM nudge_evaluate('docs', 'embedding', 'q', 'qrels');
SELECT 'reverted all ' || (nudge_revert(fit_id) = :changed) FROM nudge.fits WHERE status = 'applied';
SELECT 'restored exactly ' || (md5(string_agg(id::text || ':' || encode(array_send(embedding), 'hex'), ',' ORDER BY id)) = :'before') FROM docs;
SELECT 'fit status ' || string_agg(status, ',') FROM nudge.fits;
DROP TABLE docs, q, qrels;
DROP EXTENSION nudge;
SELECT 'dropped ' || NOT EXISTS (SELECT FROM pg_extension WHERE extname = 'nudge');
EOF
cat >"$work/expected" <<EOF
version $version
fit changed rows true
vectors changed true
ndcg improved true
reverted all true
restored exactly true
fit status reverted
dropped true
EOF

# check_sql_output FILE MAJOR: FILE (the psql output) is what was expected.
check_sql_output() {
  if ! diff -u "$work/expected" "$1"; then
    echo "package test: PostgreSQL $2: the extension from the package did not behave as expected (diff above)" >&2
    return 1
  fi
  echo "    CREATE EXTENSION, nudge_fit, nudge_revert (byte-exact), DROP EXTENSION: ok"
}

# In one system (the host, or the root when $1 is "root17"):
_in() { if [ "$1" = root17 ]; then shift; _pg17_chroot "$@"; else shift; "$@"; fi; }
_path() { if [ "$1" = root17 ]; then echo "$NUDGE_PG17_ROOT$2"; else echo "$2"; fi; }
_status() { _in "$1" dpkg-query -W -f='${Status}' "$2" 2>/dev/null || true; }

# pkg_install WHERE PKG DEB: refuse if PKG is installed already; set aside the files of DEB
# present now (left by cargo pgrx, owned by no package) in $work/saved-PKG; apt-get install;
# check dpkg's view and every file (dpkg -V: contents match the package's md5sums).
pkg_install() {
  local where="$1" pkg="$2" deb="$3" f save="$work/saved-$2" log="$work/apt-$2.log"
  if [ "$(_status "$where" "$pkg")" = "install ok installed" ]; then
    echo "package test: $pkg is installed already; remove it first (apt-get remove $pkg)" >&2
    return 1
  fi
  mkdir -p "$save"
  dpkg-deb --fsys-tarfile "$deb" | tar -t | sed -n 's|^\./|/|; /[^/]$/p' >"$work/files-$pkg"
  while read -r f; do
    if [ -e "$(_path "$where" "$f")" ]; then
      mkdir -p "$save$(dirname "$f")"; cp -a "$(_path "$where" "$f")" "$save$f"
    fi
  done <"$work/files-$pkg"
  echo "    apt-get install $(basename "$deb") (set aside first: $(find "$save" -type f | wc -l) unpackaged nudge files)"
  _in "$where" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
    "$(if [ "$where" = root17 ]; then echo "${deb#"$NUDGE_PG17_ROOT"}"; else echo "$deb"; fi)" >"$log" 2>&1 \
    || { cat "$log" >&2; echo "package test: apt-get install of $deb failed" >&2; return 1; }
  grep -q '^0 upgraded, 1 newly installed, 0 to remove' "$log" \
    || { cat "$log" >&2; echo "package test: apt-get installed more than $pkg" >&2; return 1; }
  [ "$(_status "$where" "$pkg")" = "install ok installed" ] \
    || { echo "package test: dpkg -s $pkg: $(_status "$where" "$pkg")" >&2; return 1; }
  _in "$where" dpkg -L "$pkg" >"$work/listed-$pkg"
  while read -r f; do
    grep -qxF "$f" "$work/listed-$pkg" || { echo "package test: dpkg -L $pkg lacks $f" >&2; return 1; }
    [ -f "$(_path "$where" "$f")" ] || { echo "package test: $f not installed" >&2; return 1; }
  done <"$work/files-$pkg"
  if ! _in "$where" dpkg -V "$pkg" >"$work/verify-$pkg" 2>&1 || [ -s "$work/verify-$pkg" ]; then
    cat "$work/verify-$pkg" >&2; echo "package test: dpkg -V $pkg reports changes" >&2; return 1
  fi
  echo "    installed: $(tr '\n' ' ' <"$work/files-$pkg")"
}

# pkg_remove WHERE PKG: apt-get remove; dpkg no longer has it installed, its files are gone;
# then the set-aside files go back.
pkg_remove() {
  local where="$1" pkg="$2" f save="$work/saved-$2" log="$work/apt-$2.log"
  _in "$where" env DEBIAN_FRONTEND=noninteractive apt-get remove -y "$pkg" >"$log" 2>&1 \
    || { cat "$log" >&2; echo "package test: apt-get remove $pkg failed" >&2; return 1; }
  grep -q '^0 upgraded, 0 newly installed, 1 to remove' "$log" \
    || { cat "$log" >&2; echo "package test: apt-get removed more than $pkg" >&2; return 1; }
  case "$(_status "$where" "$pkg")" in
    *" installed" | *half*) echo "package test: after apt-get remove, dpkg -s $pkg: $(_status "$where" "$pkg")" >&2; return 1 ;;
  esac
  if _in "$where" dpkg -s "$pkg" >"$work/status-$pkg" 2>&1 && ! grep -q '^Status: .* not-installed$' "$work/status-$pkg"; then
    cat "$work/status-$pkg" >&2; echo "package test: dpkg -s $pkg after apt-get remove (above)" >&2; return 1
  fi
  while read -r f; do
    [ ! -e "$(_path "$where" "$f")" ] || { echo "package test: $f left behind by apt-get remove $pkg" >&2; return 1; }
  done <"$work/files-$pkg"
  echo "    apt-get remove $pkg: not installed, its $(wc -l <"$work/files-$pkg") files gone"
  restore_saved "$where" "$pkg"
}

# restore_saved WHERE PKG: put back the files set aside before the install (unless present).
restore_saved() {
  local where="$1" save="$work/saved-$2" f
  [ -d "$save" ] || return 0
  (cd "$save" && find . -type f -printf '%P\n') | while read -r f; do
    [ -e "$(_path "$where" "/$f")" ] || cp -a "$save/$f" "$(_path "$where" "/$f")"
  done
  rm -rf "$save"
}

# On failure: stop what was started, remove the package if the test installed it, put back.
cleanup_host() {
  [ -z "${pg15_datadir:-}" ] || { pg_down "$pg15_datadir" /usr/lib/postgresql/15/bin; rm -rf "$pg15_datadir" "$pg15_datadir.initdb.log"; }
  if [ -n "${pg15_installed:-}" ] && [ "$(_status host postgresql-15-nudge)" = "install ok installed" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq postgresql-15-nudge >/dev/null 2>&1 || true
  fi
  [ -z "${pg15_installed:-}" ] || restore_saved host postgresql-15-nudge
  rm -rf "$work"
}

test_15() {
  local deb="$out/postgresql-15-nudge_${deb_version}_${arch}.deb" bindir=/usr/lib/postgresql/15/bin start=$SECONDS
  echo "==> package test: PostgreSQL 15 (host, $("$bindir/postgres" --version))"
  cp "$deb" "$work/"; chmod 644 "$work/$(basename "$deb")"
  trap cleanup_host EXIT
  pg15_installed=1
  pkg_install host postgresql-15-nudge "$work/$(basename "$deb")"
  pg15_datadir="$(mktemp -d /tmp/nudge-package-test15.XXXXXX)"
  (
    pg_up "$pg15_datadir" "$bindir"
    "$bindir/psql" -X -A -t -q -v ON_ERROR_STOP=1 -d postgres <"$work/test.sql" >"$work/out15" 2>&1 \
      || { cat "$work/out15" >&2; exit 1; }
  )
  check_sql_output "$work/out15" 15
  pg_down "$pg15_datadir" "$bindir"; rm -rf "$pg15_datadir" "$pg15_datadir.initdb.log"; pg15_datadir=""
  pkg_remove host postgresql-15-nudge
  pg15_installed=""
  trap 'rm -rf "$work"' EXIT
  timings+=("PostgreSQL 15: install, test, remove $((SECONDS - start)) s")
}

# PostgreSQL 17: the same inside the root, in a subshell holding the mounts (scripts/pg17.sh).
test_17() (
  set -euo pipefail
  deb="$out/postgresql-17-nudge_${deb_version}_${arch}.deb"
  r="$NUDGE_PG17_ROOT"
  _pg17_mounts=(); _pg17_datadir=""; installed=""
  rwork="$(mktemp -d "$r/tmp/nudge-package-test17.XXXXXX")"
  chmod 755 "$rwork"
  trap '_pg17_server_down
        [ -z "$_pg17_datadir" ] || rm -rf --one-file-system "${r:?}$_pg17_datadir" "$r$_pg17_datadir.initdb.log"
        if [ -n "$installed" ] && [ "$(_status root17 postgresql-17-nudge)" = "install ok installed" ]; then
          _in root17 env DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq postgresql-17-nudge >/dev/null 2>&1 || true
        fi
        [ -z "$installed" ] || restore_saved root17 postgresql-17-nudge
        rm -rf --one-file-system "$rwork"; pg17_umount' EXIT
  trap 'exit 130' INT TERM
  pg17_mount
  echo "==> package test: PostgreSQL 17 (Debian 13 root $r, $(_pg17_chroot $_pg17_bindir/postgres --version))"
  cp "$deb" "$rwork/"; chmod 644 "$rwork/$(basename "$deb")"
  installed=1
  pkg_install root17 postgresql-17-nudge "$rwork/$(basename "$deb")"
  _pg17_server_up
  _pg17_psql -v ON_ERROR_STOP=1 -d postgres <"$work/test.sql" >"$work/out17" 2>&1 || { cat "$work/out17" >&2; exit 1; }
  check_sql_output "$work/out17" 17
  _pg17_server_down
  rm -rf --one-file-system "${r:?}$_pg17_datadir" "$r$_pg17_datadir.initdb.log"; _pg17_datadir=""
  pkg_remove root17 postgresql-17-nudge
  installed=""
)

for m in "${majors[@]}"; do
  case "$m" in
    15) test_15 ;;
    17) start=$SECONDS; test_17; timings+=("PostgreSQL 17: install, test, remove $((SECONDS - start)) s") ;;
  esac
done
echo "==> package test passed (${majors[*]}, ${flag:-release} packages)"
printf '    %s\n' "${timings[@]}"
