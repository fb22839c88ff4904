#!/usr/bin/env bash
# Upgrade test (issue 19): fits made by the previous release survive the new version.
#
#  0. CHANGELOG.md: every released upgrade script is unchanged (its sha256 is recorded there),
#     every released version's script is recorded, and a script leads from the last release to
#     the version in Cargo.toml.
#  1. Builds the last release from its commit (CHANGELOG.md) with `git archive` into
#     target/upgrade/vX-src, in its own target dir (target/upgrade/target); the package is
#     cached in target/upgrade/vX-pg18 and rebuilt only when the commit changes. Builds the
#     current version (debug, `cargo pgrx package`, in the repo's target dir, which
#     `cargo pgrx test` already filled) for PostgreSQL 18 and 16.
#  2. In a private copy of the embedded PostgreSQL 18 (target/upgrade/pg18; the shared install
#     is never written), on the last release: applied in-place fits on vector, real[] and
#     double precision[] tables, a staged fit not yet applied, a fit into a target column.
#     Then the new files over the old ones, a restart: before ALTER EXTENSION nudge UPDATE the
#     new library refuses (55000, naming that command) and changes nothing; after it the
#     applied fits revert byte-exact, the staged fit applies and reverts byte-exact, the target
#     fit refits to the same vectors, and the upgraded catalog (functions with their settings,
#     privileges and bodies, tables, columns, constraints, policies, initial privileges, ...)
#     is the one a fresh CREATE EXTENSION makes.
#  3. pg_dump -Fc of the upgraded database, pg_restore into a new one: fits, backups and the
#     catalog come along, fits made after the upgrade revert byte-exact there.
#  4. pg_upgrade from PostgreSQL 16 (pgserver wheel, private copy) to 18 of a database with
#     applied and staged fits, the same nudge on both: revert is byte-exact on 18 and the
#     staged fit applies.
# One line per check; exit status 1 if any failed. Data directories are under
# /tmp/nudge-upgrade.*, removed on success, kept (and named) on failure.
#
# Env: NUDGE_UPGRADE_FROM=VERSION (default: the newest released version in CHANGELOG.md other
# than Cargo.toml's), NUDGE_UPGRADE_KEEP=1 (keep the data directories).
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg.sh
# Our servers take free ports, and every connection names its server: NUDGE_PG_PORT and the
# PG* variables are those of scripts/test.sh's own server, still running when it calls this.
unset NUDGE_PG_PORT PGHOST PGPORT PGUSER PGDATABASE PGSERVICE PGOPTIONS

repo="$PWD"
U="$repo/target/upgrade"
target_base="${CARGO_TARGET_DIR:-$repo/target}"
mkdir -p "$U"
RUN="$(mktemp -d /tmp/nudge-upgrade.XXXXXX)"
chown "$NUDGE_PG_USER" "$RUN" 2>/dev/null || true
chmod 755 "$RUN"
failures=0
started=()   # "datadir bindir" of the servers this script started
t0=$SECONDS
timings=()

exec 3>&1   # the output of finish, whatever redirection the command that failed had
finish() {
  local rc=$? s
  exec 1>&3 2>&3
  [ "$rc" -eq 0 ] || [ "$failures" -gt 0 ] || { echo "    FAIL  the upgrade test stopped (exit status $rc)"; failures=1; }
  for s in "${started[@]}"; do
    # shellcheck disable=SC2086
    pg_down $s
  done
  if [ "$failures" -eq 0 ] && [ "${NUDGE_UPGRADE_KEEP:-0}" != 1 ]; then rm -rf "$RUN"; else echo "    (data directories and logs kept in $RUN)"; fi
}
trap finish EXIT
trap 'echo "    FAIL  line $LINENO: $BASH_COMMAND" >&2' ERR

ok() { echo "    ok    $1"; }
fail() { echo "    FAIL  $1"; failures=$((failures + 1)); }
die() { echo "    FAIL  $1" >&2; failures=$((failures + 1)); exit 1; }
# check NAME GOT WANT: passes when the two strings are equal
check() {
  if [ "$2" = "$3" ]; then ok "$1"; else fail "$1: got '$2', want '$3'"; fi
}
step() { echo "==> upgrade test: $*"; }
timed() { timings+=("$1 $((SECONDS - $2)) s"); }

# ------------------------------------------------------------------ 0. CHANGELOG.md
step "CHANGELOG.md and released upgrade scripts"
current="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
# released versions, newest first: "## 0.1.0 - 2026-12-03 (commit a485028)"
mapfile -t releases < <(sed -n 's/^## \([0-9][0-9.]*\) .*(commit \([0-9a-f]\{7,40\}\)).*$/\1 \2/p' CHANGELOG.md)
[ "${#releases[@]}" -gt 0 ] || die "CHANGELOG.md names no released version (## X.Y.Z - DATE (commit ABC))"
top="$(sed -n 's/^## \([0-9][0-9.]*\)\( .*\)\{0,1\}$/\1/p' CHANGELOG.md | head -n1)"
check "CHANGELOG.md's newest entry is Cargo.toml's version" "$top" "$current"
# released scripts: "<sha256>  sql/nudge--A--B.sql" lines, unchanged since their release
mapfile -t hashes < <(grep -E '^[0-9a-f]{64}  sql/nudge--[^ ]+--[^ ]+\.sql$' CHANGELOG.md || true)
for h in "${hashes[@]}"; do
  f="${h#*  }"
  if [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "${h%%  *}" ]; then ok "released $f unchanged"
  else fail "released $f was changed or removed (released scripts are never edited: write a new one)"; fi
done
[ "${#hashes[@]}" -gt 0 ] || echo "    (no released upgrade scripts yet)"
for ((i = 0; i + 1 < ${#releases[@]}; i++)); do
  new="${releases[i]%% *}" old="${releases[i+1]%% *}"
  if printf '%s\n' "${hashes[@]}" | grep -q "  sql/nudge--$old--$new\.sql\$"; then ok "released $new: sql/nudge--$old--$new.sql recorded"
  else fail "released $new: record the sha256 of sql/nudge--$old--$new.sql in CHANGELOG.md"; fi
done
from="${NUDGE_UPGRADE_FROM:-}" from_commit=""
for r in "${releases[@]}"; do
  if [ -n "$from" ]; then [ "${r%% *}" = "$from" ] && from_commit="${r#* }" && break
  elif [ "${r%% *}" != "$current" ]; then from="${r%% *}" from_commit="${r#* }"; break; fi
done
[ -n "$from_commit" ] || die "no released version to upgrade from (NUDGE_UPGRADE_FROM=${NUDGE_UPGRADE_FROM:-})"
[ -f "sql/nudge--$from--$current.sql" ] && ok "sql/nudge--$from--$current.sql exists" \
  || die "no upgrade script sql/nudge--$from--$current.sql"
from_commit="$(git rev-parse --verify -q "$from_commit^{commit}")" \
  || die "commit of $from not in this clone (a shallow clone? git fetch --unshallow)"
echo "    upgrading $from (commit ${from_commit:0:12}) -> $current"

# ------------------------------------------------------------------ 1. builds
# Private copies of the PostgreSQL installs (the wheels' layout: binaries find libpq & co. in
# ../../../<pkg>.libs); the nudge files in them are replaced by each phase.
private_copy() {   # private_copy PG_CONFIG DEST -> DEST holds <pkg>/pginstall and <pkg>.libs
  local src pkgdir
  src="$(dirname "$(dirname "$1")")"
  pkgdir="$(basename "$(dirname "$src")")"
  if [ "$("$2/$pkgdir/pginstall/bin/pg_config" --version 2>/dev/null)" != "$("$1" --version)" ]; then
    rm -rf "$2"
    mkdir -p "$2/$pkgdir"
    cp -a "$src" "$2/$pkgdir/pginstall"
    cp -a "$(dirname "$(dirname "$src")")/$pkgdir.libs" "$2/"
  fi
  echo "$2/$pkgdir/pginstall/bin/pg_config"
}
# install_nudge PACKAGE_DIR PG_CONFIG: the files of a `cargo pgrx package` into a private copy
install_nudge() {
  local lib share
  lib="$("$2" --pkglibdir)" share="$("$2" --sharedir)/extension"
  rm -f "$lib/nudge.so" "$share"/nudge.control "$share"/nudge--*.sql
  cp "$1$lib/nudge.so" "$lib/"
  cp "$1$share"/nudge.control "$1$share"/nudge--*.sql "$share/"
}
# package DIR OUT_DIR PG_CONFIG [cargo args...]: a debug `cargo pgrx package` of the crate in DIR
package() {
  local dir="$1" out="$2" pgc="$3" log
  shift 3
  log="$out.log"
  rm -rf "$out"
  if ! (cd "$dir" && cargo pgrx package --debug --pg-config "$pgc" --out-dir "$out" "$@") >"$log" 2>&1; then
    tail -40 "$log"
    die "cargo pgrx package in $dir (log $log)"
  fi
}

start=$SECONDS
pg18_config="$(private_copy "$(nudge_pg_config)" "$U/pg18")"
pg16_config="$(private_copy "$(nudge_pg_config_for 16)" "$U/pg16")"
bin18="$("$pg18_config" --bindir)" bin16="$("$pg16_config" --bindir)"

step "build $from from ${from_commit:0:12} (debug, target/upgrade/target; cached)"
start=$SECONDS
old_pkg="$U/v$from-pg18"
if [ "$(cat "$old_pkg/.commit" 2>/dev/null)" = "$from_commit" ] && [ -f "$old_pkg$("$pg18_config" --pkglibdir)/nudge.so" ]; then
  echo "    cached: $old_pkg"
else
  rm -rf "$U/v$from-src"
  mkdir -p "$U/v$from-src"
  # the crate only (no data/, docs/, tests/)
  mapfile -t paths < <(git ls-tree --name-only "$from_commit" -- Cargo.toml Cargo.lock nudge.control .cargo src sql crates)
  git archive "$from_commit" "${paths[@]}" | tar -x -C "$U/v$from-src"
  CARGO_TARGET_DIR="$U/target" package "$U/v$from-src" "$old_pkg" "$pg18_config"
  echo "$from_commit" >"$old_pkg/.commit"
fi
timed "build $from (pg18)" "$start"

step "build $current (debug) for PostgreSQL 18 and 16"
start=$SECONDS
package "$repo" "$U/v$current-pg18" "$pg18_config"
timed "build $current (pg18, ${target_base#"$repo"/})" "$start"
start=$SECONDS
CARGO_TARGET_DIR="$target_base/pg16" package "$repo" "$U/v$current-pg16" "$pg16_config" --no-default-features --features pg16
timed "build $current (pg16, ${target_base#"$repo"/}/pg16)" "$start"

# ------------------------------------------------------------------ SQL helpers
q_options="-c client_min_messages=warning -c nudge.progress=off"
port=""
# server_up DATADIR BINDIR: start (initdb first if new) one of our servers; sets $port
server_up() {
  started+=("$1 $2")
  pg_up "$1" "$2" >/dev/null
  port="$PGPORT"
}
server_down() {
  local s keep=()
  pg_down "$1" "$2"
  for s in "${started[@]}"; do [ "$s" = "$1 $2" ] || keep+=("$s"); done
  started=("${keep[@]}")
}
# q DB SQL...: run SQL (stdin when no SQL is given) on our server, print unaligned tuples
q() {
  local db="$1"
  shift
  if [ "$#" -gt 0 ]; then
    PGOPTIONS="$q_options" "$bin18/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db" -c "$*"
  else
    PGOPTIONS="$q_options" "$bin18/psql" -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d "$db"
  fi
}

# Test tables: 300 documents in 8 dimensions, 60 queries with labels (as nudge_fit.sql).
# make_corpus NAME TYPE [EXTRA COLUMN DEFINITION]: NAME, NAME_orig (a copy) and q_NAME
make_corpus() {
  local name="$1" type="$2" extra="${3:-}"
  cat <<SQL
CREATE TABLE $name AS
SELECT i AS id, ARRAY(SELECT sin(i * j * 0.37 + j)::real FROM generate_series(1, 8) j)::$type AS embedding
  FROM generate_series(1, 300) i;
ALTER TABLE $name ADD PRIMARY KEY (id);
${extra:+ALTER TABLE $name ADD COLUMN $extra;}
CREATE TABLE ${name}_orig AS SELECT * FROM $name;
CREATE TABLE q_$name AS
SELECT k AS id, ARRAY(SELECT sin((k * 7 % 300 + 1) * j * 0.37 + j + 0.4 * cos(k * j))::real
                        FROM generate_series(1, 8) j)::$type AS embedding
  FROM generate_series(1, 60) k;
SQL
}
common_sql() {
  cat <<'SQL'
CREATE TABLE qrels AS
SELECT k AS query_id, k * 7 % 300 + 1 AS doc_id, 1 AS score FROM generate_series(1, 60) k
UNION ALL SELECT k, k + 100, 2 FROM generate_series(1, 10) k;
-- rows of t whose column col differs, byte for byte (its type's binary send), from t_orig's
CREATE FUNCTION differing(t regclass, col text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE n bigint; send regproc;
BEGIN
  SELECT typsend INTO send FROM pg_type
   WHERE oid = (SELECT atttypid FROM pg_attribute WHERE attrelid = t AND attname = col);
  EXECUTE format('SELECT count(*) FROM %s a FULL JOIN %s_orig b USING (id)
                   WHERE a.id IS NULL OR b.id IS NULL OR %s(a.%I) IS DISTINCT FROM %s(b.%I)',
                 t, t, send, col, send, col) INTO n;
  RETURN n;
END $$;
-- md5 of a column's bytes, in id order
CREATE FUNCTION col_md5(t regclass, col text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE r text; send regproc;
BEGIN
  SELECT typsend INTO send FROM pg_type
   WHERE oid = (SELECT atttypid FROM pg_attribute WHERE attrelid = t AND attname = col);
  EXECUTE format('SELECT md5(string_agg(id || '':'' || coalesce(encode(%s(%I), ''hex''), ''NULL''), '','' ORDER BY id)) FROM %s',
                 send, col, t) INTO r;
  RETURN r;
END $$;
-- SQLSTATE, message and hint of the error a statement raises
CREATE FUNCTION error_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE s text; m text; h text;
BEGIN
  EXECUTE stmt;
  RETURN 'no error';
EXCEPTION WHEN OTHERS THEN
  GET STACKED DIAGNOSTICS s = RETURNED_SQLSTATE, m = MESSAGE_TEXT, h = PG_EXCEPTION_HINT;
  RETURN s || ': ' || m || ' HINT: ' || h;
END $$;
SQL
}
# fit DB CORPUS [ARGS]: an in-place fit at gamma 0.2; prints "fit_id records_changed"
fit() {
  q "$1" "SELECT fit_id || ' ' || records_changed FROM nudge_fit('$2', 'embedding', 'q_$2', 'qrels', gamma => 0.2${3:+, $3})"
}

# The extension's objects, normalized: compared between a fresh install and an upgraded one.
# Privileges are compared as what they grant: no ACL (NULL) reads as the owner's default, as
# does a missing pg_init_privs row (what pg_dump compares an extension object's ACL with);
# 0.1.0 granted on the fit-id sequence, so 0.2.0's REVOKE leaves an explicit ACL equal to the
# default where a fresh install has NULL.
catalog_listing() {
  q "$1" <<'SQL'
WITH ext AS (SELECT oid, extnamespace FROM pg_extension WHERE extname = 'nudge'),
members AS (SELECT d.classid, d.objid FROM pg_depend AS d, ext
             WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = ext.oid AND d.deptype = 'e'),
lines(l) AS (
  SELECT 'extension ' || concat_ws(' | ', e.extversion, e.extnamespace::regnamespace, e.extrelocatable,
         (SELECT string_agg(c::regclass::text, ',' ORDER BY c::regclass::text) FROM unnest(e.extconfig) AS c),
         e.extcondition::text)
    FROM pg_extension AS e WHERE e.extname = 'nudge'
  UNION ALL
  SELECT 'member ' || pg_describe_object(m.classid, m.objid, 0) FROM members AS m
  UNION ALL
  SELECT 'schema ' || concat_ws(' | ', n.nspname, 'owner=' || n.nspowner::regrole,
         'acl=' || (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(coalesce(n.nspacl, acldefault('n', n.nspowner))) AS a),
         'init=' || coalesce((SELECT string_agg(a::text, ',' ORDER BY a::text)
                                FROM unnest(coalesce(ip.initprivs, acldefault('n', n.nspowner))) AS a), 'none'),
         'comment=' || coalesce(obj_description(n.oid, 'pg_namespace'), 'none'))
    FROM members AS m JOIN pg_namespace AS n ON n.oid = m.objid
    LEFT JOIN pg_init_privs AS ip ON ip.classoid = 'pg_namespace'::regclass AND ip.objoid = n.oid AND ip.objsubid = 0
   WHERE m.classid = 'pg_namespace'::regclass
  UNION ALL
  SELECT 'function ' || concat_ws(' | ', p.pronamespace::regnamespace || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
         'kind=' || p.prokind::text, 'args=' || pg_get_function_arguments(p.oid), 'result=' || pg_get_function_result(p.oid),
         'lang=' || l.lanname, 'strict=' || p.proisstrict, 'secdef=' || p.prosecdef, 'volatile=' || p.provolatile::text,
         'parallel=' || p.proparallel::text, 'leakproof=' || p.proleakproof, 'cost=' || p.procost, 'rows=' || p.prorows,
         'owner=' || p.proowner::regrole, 'config=' || coalesce(p.proconfig::text, 'none'),
         'acl=' || (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(coalesce(p.proacl, acldefault('f', p.proowner))) AS a),
         'init=' || (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(coalesce(ip.initprivs, acldefault('f', p.proowner))) AS a),
         'bin=' || coalesce(p.probin, 'none'), 'comment=' || coalesce(obj_description(p.oid, 'pg_proc'), 'none'))
         || E'\n    src=' || replace(p.prosrc, E'\n', E'\n    ')
    FROM members AS m JOIN pg_proc AS p ON p.oid = m.objid JOIN pg_language AS l ON l.oid = p.prolang
    LEFT JOIN pg_init_privs AS ip ON ip.classoid = 'pg_proc'::regclass AND ip.objoid = p.oid AND ip.objsubid = 0
   WHERE m.classid = 'pg_proc'::regclass
  UNION ALL
  SELECT 'relation ' || concat_ws(' | ', c.oid::regclass, 'kind=' || c.relkind::text, 'owner=' || c.relowner::regrole,
         'acl=' || (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(coalesce(c.relacl, acldefault(k.t, c.relowner))) AS a),
         'init=' || (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(coalesce(ip.initprivs, acldefault(k.t, c.relowner))) AS a),
         'rls=' || c.relrowsecurity, 'force_rls=' || c.relforcerowsecurity, 'options=' || coalesce(c.reloptions::text, 'none'),
         'persistence=' || c.relpersistence::text, 'comment=' || coalesce(obj_description(c.oid, 'pg_class'), 'none'))
    FROM members AS m JOIN pg_class AS c ON c.oid = m.objid
    CROSS JOIN LATERAL (SELECT (CASE WHEN c.relkind = 'S' THEN 's' ELSE 'r' END)::"char" AS t) AS k
    LEFT JOIN pg_init_privs AS ip ON ip.classoid = 'pg_class'::regclass AND ip.objoid = c.oid AND ip.objsubid = 0
   WHERE m.classid = 'pg_class'::regclass
  UNION ALL
  SELECT 'column ' || concat_ws(' | ', c.oid::regclass || '.' || a.attname, 'num=' || a.attnum, format_type(a.atttypid, a.atttypmod),
         'notnull=' || a.attnotnull, 'default=' || coalesce(pg_get_expr(d.adbin, d.adrelid), 'none'),
         'storage=' || a.attstorage::text, 'compression=' || a.attcompression::text, 'identity=' || a.attidentity::text,
         'acl=' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) AS x), 'default'),
         'comment=' || coalesce(col_description(c.oid, a.attnum), 'none'))
    FROM members AS m JOIN pg_class AS c ON c.oid = m.objid AND c.relkind::text = 'r'
    JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
   WHERE m.classid = 'pg_class'::regclass
  UNION ALL
  SELECT 'constraint ' || concat_ws(' | ', k.conrelid::regclass, k.conname, k.contype::text, pg_get_constraintdef(k.oid),
         'validated=' || k.convalidated)
    FROM members AS m JOIN pg_constraint AS k ON k.conrelid = m.objid WHERE m.classid = 'pg_class'::regclass
  UNION ALL
  SELECT 'index ' || pg_get_indexdef(i.indexrelid)
    FROM members AS m JOIN pg_index AS i ON i.indrelid = m.objid WHERE m.classid = 'pg_class'::regclass
  UNION ALL
  SELECT 'trigger ' || pg_get_triggerdef(t.oid)
    FROM members AS m JOIN pg_trigger AS t ON t.tgrelid = m.objid AND NOT t.tgisinternal
   WHERE m.classid = 'pg_class'::regclass
  UNION ALL
  SELECT 'policy ' || concat_ws(' | ', p.schemaname || '.' || p.tablename, p.policyname, p.permissive, p.roles::text, p.cmd,
         'using=' || coalesce(p.qual, 'none'), 'check=' || coalesce(p.with_check, 'none'))
    FROM pg_policies AS p WHERE p.schemaname = 'nudge'
  UNION ALL
  SELECT 'sequence ' || concat_ws(' | ', s.seqrelid::regclass, s.seqtypid::regtype, s.seqstart, s.seqincrement, s.seqmax,
         s.seqmin, s.seqcache, s.seqcycle)
    FROM members AS m JOIN pg_sequence AS s ON s.seqrelid = m.objid WHERE m.classid = 'pg_class'::regclass
  UNION ALL
  SELECT 'column init_privs ' || concat_ws(' | ', pg_describe_object(i.classoid, i.objoid, i.objsubid), i.privtype::text,
         (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(i.initprivs) AS a))
    FROM pg_init_privs AS i
   WHERE (i.classoid, i.objoid) IN (SELECT classid, objid FROM members) AND i.objsubid <> 0
)
SELECT l FROM lines ORDER BY l COLLATE "C";
SQL
}
# same_catalog NAME DB_A DB_B: the two listings are equal, or FAIL with the diff
same_catalog() {
  catalog_listing "$2" >"$RUN/catalog-$2.txt"
  catalog_listing "$3" >"$RUN/catalog-$3.txt"
  if diff -u "$RUN/catalog-$2.txt" "$RUN/catalog-$3.txt" >"$RUN/catalog-$2-$3.diff"; then
    ok "$1 ($(wc -l <"$RUN/catalog-$2.txt") lines)"
  else
    fail "$1: catalog of $2 (-) and $3 (+) differ:"
    sed 's/^/          /' "$RUN/catalog-$2-$3.diff" | head -120
  fi
}

# ------------------------------------------------------------------ 2. ALTER EXTENSION UPDATE
step "$from -> $current in place (ALTER EXTENSION nudge UPDATE) on PostgreSQL 18"
start=$SECONDS
install_nudge "$old_pkg" "$pg18_config"
data18="$RUN/pg18"
server_up "$data18" "$bin18"
q postgres "CREATE DATABASE upg"
{
  echo "CREATE EXTENSION vector; CREATE EXTENSION nudge;"
  common_sql
  make_corpus docs_vec vector         # applied in place (vector)
  make_corpus docs_arr 'real[]'       # applied in place (real[])
  make_corpus docs_f8 'float8[]'      # applied in place (double precision[])
  make_corpus docs_stg vector         # staged, not applied
  make_corpus docs_t 'real[]' 'nudged real[]'   # into a target column
  make_corpus docs_pre 'real[]'       # applied, reverted before the update
} | q upg
check "extension created at $from" "$(q upg "SELECT extversion FROM pg_extension WHERE extname = 'nudge'")" "$from"
read -r fit_vec n_vec < <(fit upg docs_vec)
read -r fit_arr n_arr < <(fit upg docs_arr)
read -r fit_f8 n_f8 < <(fit upg docs_f8)
read -r fit_stg n_stg < <(fit upg docs_stg "staged => true")
read -r fit_t n_t < <(fit upg docs_t "target => 'nudged'")
read -r fit_pre n_pre < <(fit upg docs_pre)
check "$from: fits applied, staged and into a target column" \
  "$(q upg "SELECT string_agg(status, ',' ORDER BY fit_id) FROM nudge.fits")" "applied,applied,applied,staged,applied,applied"
check "$from: the applied fits changed their tables" \
  "$(q upg "SELECT differing('docs_vec', 'embedding') > 0 AND differing('docs_arr', 'embedding') > 0 AND differing('docs_f8', 'embedding') > 0")" t
check "$from: the staged fit wrote nothing yet, the target fit only its target" \
  "$(q upg "SELECT differing('docs_stg', 'embedding') = 0 AND differing('docs_t', 'embedding') = 0 AND differing('docs_t', 'nudged') = 300")" t
# nudge.fits as 0.1.0 recorded it (0.2.0 adds the guard columns, NULL for those fits)
fits_kept="SELECT md5(string_agg((pg_catalog.to_jsonb(f) - '{guard_queries,guard_qrels,guard_metric,guard_tolerance,guard_before,guard_after}'::text[])::text, ',' ORDER BY fit_id)) FROM nudge.fits AS f"
t_md5="$(q upg "SELECT col_md5('docs_t', 'nudged')")"
before_md5="$(q upg "SELECT string_agg(col_md5(t, 'embedding'), ',') FROM unnest('{docs_vec,docs_arr,docs_f8,docs_stg,docs_t}'::regclass[]) AS t")"
catalog_before="$(q upg "$fits_kept") $(q upg "SELECT count(*) FROM nudge.fit_backups") $(q upg "SELECT count(*) FROM nudge.fit_staged")"
server_down "$data18" "$bin18"

install_nudge "$U/v$current-pg18" "$pg18_config"
server_up "$data18" "$bin18"
hint="HINT: Run ALTER EXTENSION nudge UPDATE TO '$current'; (fits and backups are kept)."
for stmt in "SELECT * FROM nudge_fit('docs_arr', 'embedding', 'q_docs_arr', 'qrels', gamma => 0.2)" \
            "SELECT * FROM nudge_refit($fit_t)" \
            "CALL nudge_apply($fit_stg)"; do
  got="$(q upg "SELECT error_of(\$s\$$stmt\$s\$)")"
  case "$got" in
    "55000: "*"$hint") ok "before the update, ${stmt%%(*}(...) refuses: ${got%% HINT*}" ;;
    *) fail "before the update, ${stmt%%(*}(...): got '$got', want 55000 and '$hint'" ;;
  esac
done
check "the refused calls changed nothing" \
  "$(q upg "SELECT string_agg(col_md5(t, 'embedding'), ',') FROM unnest('{docs_vec,docs_arr,docs_f8,docs_stg,docs_t}'::regclass[]) AS t") $(q upg "$fits_kept") $(q upg "SELECT count(*) FROM nudge.fit_backups") $(q upg "SELECT count(*) FROM nudge.fit_staged")" \
  "$before_md5 $catalog_before"

# 0.1.0's nudge_revert is PL/pgSQL: until the update it runs as it did (on the new library);
# a revert in the library refuses like the others
if [ "$(q upg "SELECT l.lanname FROM pg_proc AS p JOIN pg_language AS l ON l.oid = p.prolang WHERE p.proname = 'nudge_revert'")" = plpgsql ]; then
  check "before the update, $from's PL/pgSQL nudge_revert($fit_pre) still works, byte-exact" \
    "$(q upg "SELECT nudge_revert($fit_pre)") $(q upg "SELECT differing('docs_pre', 'embedding')")" "$n_pre 0"
else
  got="$(q upg "SELECT error_of('SELECT nudge_revert($fit_pre)')")"
  case "$got" in
    "55000: "*"$hint") ok "before the update, nudge_revert(...) refuses" ;;
    *) fail "before the update, nudge_revert(...): got '$got', want 55000 and '$hint'" ;;
  esac
fi
# (the fits' values in the columns they had before the update: columns the update adds are new)
fits_cols="$(q upg "SELECT array_agg(attname::text) FROM pg_attribute WHERE attrelid = 'nudge.fits'::regclass AND attnum > 0 AND NOT attisdropped")"
fits_md5="SELECT md5(string_agg((SELECT jsonb_object_agg(e.k, e.v) FROM jsonb_each(to_jsonb(f)) AS e(k, v) WHERE e.k = ANY ('$fits_cols'::text[]))::text, ',' ORDER BY fit_id)) FROM nudge.fits AS f"
catalog_before="$(q upg "$fits_md5") $(q upg "SELECT count(*) FROM nudge.fit_backups") $(q upg "SELECT count(*) FROM nudge.fit_staged")"

q upg "ALTER EXTENSION nudge UPDATE"
check "ALTER EXTENSION nudge UPDATE: extversion" "$(q upg "SELECT extversion FROM pg_extension WHERE extname = 'nudge'")" "$current"
check "fits, backups and staged rows kept by the update" \
  "$(q upg "$fits_md5") $(q upg "SELECT count(*) FROM nudge.fit_backups") $(q upg "SELECT count(*) FROM nudge.fit_staged")" \
  "$catalog_before"
q postgres "CREATE DATABASE fresh"
q fresh "CREATE EXTENSION vector; CREATE EXTENSION nudge;"
same_catalog "upgraded catalog = fresh CREATE EXTENSION nudge $current" fresh upg

for t in "docs_vec $fit_vec $n_vec vector" "docs_arr $fit_arr $n_arr real[]" "docs_f8 $fit_f8 $n_f8 double precision[]"; do
  read -r tbl id n kind <<<"$t"
  check "revert of $from's fit $id ($kind): rows restored" "$(q upg "SELECT nudge_revert($id)")" "$n"
  check "revert of $from's fit $id ($kind): byte-exact" "$(q upg "SELECT differing('$tbl', 'embedding')")" 0
done
check "apply of $from's staged fit $fit_stg (vector): rows_written = records_changed" \
  "$(q upg "CALL nudge_apply($fit_stg)")" "$n_stg|0"
check "staged fit $fit_stg: applied, no staged rows left, table written" \
  "$(q upg "SELECT status || ' ' || (SELECT count(*) FROM nudge.fit_staged) || ' ' || differing('docs_stg', 'embedding') FROM nudge.fits WHERE fit_id = $fit_stg")" \
  "applied 0 $n_stg"
check "revert of the applied staged fit $fit_stg: byte-exact" \
  "$(q upg "SELECT nudge_revert($fit_stg)") $(q upg "SELECT differing('docs_stg', 'embedding')")" "$n_stg 0"
read -r refit_t n_refit < <(q upg "SELECT fit_id || ' ' || records_changed FROM nudge_refit($fit_t)")
check "refit of $from's target fit $fit_t: records changed as the fit" "$n_refit" "$n_t"
check "refit $refit_t: recorded as a refit of $fit_t, applied" \
  "$(q upg "SELECT refit_of || ' ' || status || ' ' || target FROM nudge.fits WHERE fit_id = $refit_t")" "$fit_t applied nudged"
check "refit $refit_t: target column as $from wrote it, source untouched" \
  "$(q upg "SELECT col_md5('docs_t', 'nudged') || ' ' || differing('docs_t', 'embedding')")" "$t_md5 0"
timed "ALTER EXTENSION UPDATE checks" "$start"

# ------------------------------------------------------------------ 3. pg_dump / pg_restore
step "pg_dump -Fc / pg_restore of the upgraded database"
start=$SECONDS
read -r dfit_arr dn_arr < <(fit upg docs_arr)
read -r dfit_vec dn_vec < <(fit upg docs_vec)
read -r dfit_stg dn_stg < <(fit upg docs_stg "staged => true")
fits_sig="SELECT md5(string_agg(f::text, ',' ORDER BY fit_id)) FROM nudge.fits AS f"
backups_sig="SELECT count(*) || ' ' || md5(string_agg(b::text, ',' ORDER BY fit_id, row_id)) FROM nudge.fit_backups AS b"
staged_sig="SELECT count(*) || ' ' || md5(string_agg(s.fit_id || s.row_id || s.read || s.vector::text, ',' ORDER BY fit_id, row_id)) FROM nudge.fit_staged AS s"
src_sig="$(q upg "$fits_sig") / $(q upg "$backups_sig") / $(q upg "$staged_sig")"
"$bin18/pg_dump" -Fc -h 127.0.0.1 -p "$port" -U postgres -d upg -f "$RUN/upg.dump"
q postgres "CREATE DATABASE restored"
if "$bin18/pg_restore" --exit-on-error -h 127.0.0.1 -p "$port" -U postgres -d restored "$RUN/upg.dump" 2>"$RUN/restore.log"; then
  ok "pg_restore"
else
  fail "pg_restore: $(head -5 "$RUN/restore.log")"
fi
check "restored: fits, backups and staged rows came along" \
  "$(q restored "$fits_sig") / $(q restored "$backups_sig") / $(q restored "$staged_sig")" "$src_sig"
same_catalog "restored catalog = fresh CREATE EXTENSION nudge $current" fresh restored
check "restored: revert of fit $dfit_arr (real[], made after the update) byte-exact" \
  "$(q restored "SELECT nudge_revert($dfit_arr)") $(q restored "SELECT differing('docs_arr', 'embedding')")" "$dn_arr 0"
check "restored: revert of fit $dfit_vec (vector, made after the update) byte-exact" \
  "$(q restored "SELECT nudge_revert($dfit_vec)") $(q restored "SELECT differing('docs_vec', 'embedding')")" "$dn_vec 0"
# A staged fit's rows name the row versions it read (tableoid, ctid), which a restored table
# does not have: nudge_apply writes none of them (each counted as changed by the application).
# That is the safe outcome, checked here; apply or revert staged fits before a dump.
check "restored: the staged fit $dfit_stg writes nothing (its row versions are gone: all $dn_stg skipped)" \
  "$(q restored "CALL nudge_apply($dfit_stg)") $(q restored "SELECT differing('docs_stg', 'embedding')")" "0|$dn_stg 0"
check "restored: and its revert restores nothing, table unchanged" \
  "$(q restored "SELECT nudge_revert($dfit_stg)") $(q restored "SELECT differing('docs_stg', 'embedding')")" "0 0"
check "restored: a new fit draws a new fit id" \
  "$(q restored "SELECT (SELECT fit_id FROM nudge_fit('docs_f8', 'embedding', 'q_docs_f8', 'qrels', gamma => 0.2)) > $dfit_stg")" t
server_down "$data18" "$bin18"
timed "pg_dump/pg_restore checks" "$start"

# ------------------------------------------------------------------ 4. pg_upgrade 16 -> 18
step "pg_upgrade PostgreSQL 16 -> 18 with nudge $current on both"
start=$SECONDS
install_nudge "$U/v$current-pg16" "$pg16_config"
data16="$RUN/pg16"
server_up "$data16" "$bin16"
q postgres "CREATE DATABASE fits"
{
  echo "CREATE EXTENSION vector; CREATE EXTENSION nudge;"
  common_sql
  make_corpus docs_arr 'real[]'
  make_corpus docs_f8 'float8[]'
  make_corpus docs_vec vector
  make_corpus docs_stg 'real[]'
} | q fits
read -r ufit_arr un_arr < <(fit fits docs_arr)
read -r ufit_vec un_vec < <(fit fits docs_vec)
read -r ufit_f8 un_f8 < <(fit fits docs_f8)
read -r ufit_stg un_stg < <(fit fits docs_stg "staged => true")
check "PostgreSQL 16: fits applied and staged" \
  "$(q fits "SELECT string_agg(status, ',' ORDER BY fit_id) || ' ' || current_setting('server_version_num')::int / 10000 FROM nudge.fits")" "applied,applied,applied,staged 16"
vector16="$(q fits "SELECT extversion FROM pg_extension WHERE extname = 'vector'")"
up_sig="$(q fits "$fits_sig") / $(q fits "$backups_sig") / $(q fits "$staged_sig")"
server_down "$data16" "$bin16"

data18u="$RUN/pg18-upgraded"
# (initdb of 18 enables data checksums by default, of 16 not: pg_upgrade needs them alike)
as_pg_user "$bin18/initdb" -D "$data18u" -U postgres --auth=trust --encoding=UTF8 --locale=C --no-data-checksums >"$RUN/initdb18u.log" 2>&1 \
  || { cat "$RUN/initdb18u.log"; die "initdb for pg_upgrade"; }
if (cd "$RUN" && as_pg_user "$bin18/pg_upgrade" -b "$bin16" -B "$bin18" -d "$data16" -D "$data18u" -U postgres \
      -p "$(free_port)" -P "$(free_port)" -s "$RUN") >"$RUN/pg_upgrade.log" 2>&1; then
  ok "pg_upgrade 16 -> 18"
else
  tail -30 "$RUN/pg_upgrade.log"
  find "$data18u" -path '*pg_upgrade_output.d*' -name '*.log' -exec tail -20 {} + 2>/dev/null || true
  die "pg_upgrade 16 -> 18 (log $RUN/pg_upgrade.log)"
fi
server_up "$data18u" "$bin18"
check "upgraded cluster: PostgreSQL 18, nudge $current, fits, backups and staged rows kept" \
  "$(q fits "SELECT current_setting('server_version_num')::int / 10000 || ' ' || extversion FROM pg_extension WHERE extname = 'nudge'") $(q fits "$fits_sig") / $(q fits "$backups_sig") / $(q fits "$staged_sig")" \
  "18 $current $up_sig"
check "after pg_upgrade: revert of fit $ufit_arr (real[]) byte-exact" \
  "$(q fits "SELECT nudge_revert($ufit_arr)") $(q fits "SELECT differing('docs_arr', 'embedding')")" "$un_arr 0"
check "after pg_upgrade: revert of fit $ufit_f8 (double precision[]) byte-exact" \
  "$(q fits "SELECT nudge_revert($ufit_f8)") $(q fits "SELECT differing('docs_f8', 'embedding')")" "$un_f8 0"
check "after pg_upgrade: revert of fit $ufit_vec (vector, pgvector $vector16's catalog on 18's library) byte-exact" \
  "$(q fits "SELECT nudge_revert($ufit_vec)") $(q fits "SELECT differing('docs_vec', 'embedding')")" "$un_vec 0"
check "after pg_upgrade: the staged fit $ufit_stg applies" "$(q fits "CALL nudge_apply($ufit_stg)")" "$un_stg|0"
check "after pg_upgrade: and reverts byte-exact" \
  "$(q fits "SELECT nudge_revert($ufit_stg)") $(q fits "SELECT differing('docs_stg', 'embedding')")" "$un_stg 0"
server_down "$data18u" "$bin18"
timed "pg_upgrade checks" "$start"

timed "upgrade test total" "$t0"
echo "==> upgrade test timings"
printf '    %s\n' "${timings[@]}"
if [ "$failures" -gt 0 ]; then
  echo "==> upgrade test: $failures check(s) FAILED"
  exit 1
fi
echo "==> upgrade test: all checks passed"
