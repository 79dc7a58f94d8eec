#!/usr/bin/env bash
# Installs the programs atr-dist's tests drive, beyond the services scripts/services.sh
# starts. Idempotent: what is installed already is left alone. Installs Debian's packages
# when missing (as root); otherwise says in one line what to run.
#
# One function per program; add yours below and call it at the end.
set -euo pipefail

log() { printf 'install-test-servers: %s\n' "$*" >&2; }

apt_install() {
  if [ "$(id -u)" != 0 ]; then
    log "missing $*; run: sudo apt-get install -y $*"
    exit 1
  fi
  if [ -z "${ATR_DIST_APT_UPDATED:-}" ]; then
    log "apt-get update"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    export ATR_DIST_APT_UPDATED=1
  fi
  log "installing $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Headless Chromium and its WebDriver for the dashboard's browser tests
# (tests/tests/dashboard.rs). Debian's packages are used, never a downloaded browser build:
# chromium-driver is built from the same source as chromium, so their versions always match.
# fonts-dejavu-core gives the screenshots readable text.
ensure_chromium() {
  local missing=()
  command -v chromium >/dev/null || missing+=(chromium)
  command -v chromedriver >/dev/null || missing+=(chromium-driver)
  [ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# verdaccio 6.8.0 (a real npm registry) for the npm adapter's tests (tests/src/npm_support.rs),
# from the npm registry into ${ATR_DIST_VERDACCIO:-~/.cache/atr-dist/verdaccio}.
ensure_verdaccio() {
  local dir="${ATR_DIST_VERDACCIO:-$HOME/.cache/atr-dist/verdaccio}"
  if [ -x "$dir/node_modules/.bin/verdaccio" ]; then return 0; fi
  if ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  mkdir -p "$dir"
  cat >"$dir/package.json" <<'EOF'
{ "name": "atr-dist-verdaccio", "private": true, "version": "0.0.0", "dependencies": { "verdaccio": "6.8.0" }, "overrides": { "node-fetch": "2.7.0" } }
EOF
  log "installing verdaccio 6.8.0 into $dir"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
}

ensure_chromium
ensure_verdaccio
