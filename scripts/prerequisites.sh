# What building and running pgtide needs beyond a Rust toolchain, installed
# from the distribution when missing (Debian/Ubuntu apt). Sourced by
# scripts/dev and scripts/test.

prereq_log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_install() {
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

find_pg_bin() {
  if [ -n "${PGTIDE_PG_BIN:-}" ] && [ -x "$PGTIDE_PG_BIN/postgres" ]; then echo "$PGTIDE_PG_BIN"; return; fi
  local d
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/postgres" ] && [ -x "$d/initdb" ]; then echo "$d"; return; fi
  done
  if command -v postgres >/dev/null && command -v initdb >/dev/null; then dirname "$(command -v postgres)"; return; fi
}

has_libclang() {
  [ -n "${LIBCLANG_PATH:-}" ] && return 0
  local f
  for f in /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* \
           /usr/lib/*/libclang.so* /usr/lib/*/libclang-[0-9]*.so*; do
    [ -e "$f" ] && return 0
  done
  return 1
}

install_prerequisites() {
  # The SQL parser (pg_query) generates its bindings with bindgen, which needs libclang.
  if ! has_libclang; then
    prereq_log "installing libclang (the SQL parser's bindings are generated at build time)"
    apt_install libclang-dev
  fi
  PG_BIN=$(find_pg_bin || true)
  if [ -z "$PG_BIN" ]; then
    prereq_log "installing PostgreSQL server binaries"
    apt_install postgresql
    PG_BIN=$(find_pg_bin)
  fi
  export PGTIDE_PG_BIN="$PG_BIN"
}
