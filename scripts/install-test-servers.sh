#!/usr/bin/env bash
# Installs the programs atr-dist's tests drive, beyond the services scripts/services.sh
# starts. Idempotent: what is installed already is left alone. Installs Debian's packages
# when missing (as root); otherwise says in one line what to run.
#
# With arguments, installs only those programs: `scripts/install-test-servers.sh verdaccio`.
#
# One function per program; add yours below and list it at the end.
set -euo pipefail

LOG_PREFIX=install-test-servers
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

# Debian's Chromium and ChromeDriver for the dashboard's browser tests (tests/tests/dashboard.rs);
# nothing downloads a browser of its own.
ensure_chromium() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then return 0; fi
  apt_install chromium chromium-driver
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

# Debian's docker-registry (distribution 2.8.2) and openssl (the token issuer's key) for the
# OCI adapter's tests (tests/src/oci_support.rs); each test runs its own on 127.0.0.1.
ensure_docker_registry() {
  if command -v docker-registry >/dev/null && command -v openssl >/dev/null; then return 0; fi
  apt_install docker-registry openssl
}

# pypiserver 2.4.2 (a real Python package index) and passlib (its htpasswd file) for the PyPI
# adapter's tests (tests/src/pypi_support.rs), from PyPI into a virtualenv at
# ${ATR_DIST_PYPISERVER:-~/.cache/atr-dist/pypiserver}; each test runs its own on 127.0.0.1.
ensure_pypiserver() {
  local dir="${ATR_DIST_PYPISERVER:-$HOME/.cache/atr-dist/pypiserver}"
  if [ -x "$dir/bin/pypi-server" ] && "$dir/bin/python" -c 'import passlib' 2>/dev/null; then return 0; fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
  log "installing pypiserver 2.4.2 into $dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check pypiserver==2.4.2 passlib==1.7.4
}

# Prism 5.14.2 (Stoplight's OpenAPI validator; 5.16 needs Node >= 24) and @octokit/openapi 23.0.2
# (GitHub's published REST description) for the GitHub adapter's tests (tests/tests/github.rs),
# which replay every request the adapter sent to their mock against Prism, so that a wrong field
# name or type fails. From the npm registry into ${ATR_DIST_PRISM:-~/.cache/atr-dist/prism}.
ensure_prism() {
  local dir="${ATR_DIST_PRISM:-$HOME/.cache/atr-dist/prism}"
  if [ -x "$dir/node_modules/.bin/prism" ] && [ -f "$dir/node_modules/@octokit/openapi/generated/api.github.com.json" ]; then return 0; fi
  if ! command -v npm >/dev/null; then apt_install nodejs npm; fi
  mkdir -p "$dir"
  cat >"$dir/package.json" <<'EOF'
{ "name": "atr-dist-prism", "private": true, "version": "0.0.0", "dependencies": { "@stoplight/prism-cli": "5.14.2", "@octokit/openapi": "23.0.2" } }
EOF
  log "installing prism 5.14.2 and @octokit/openapi 23.0.2 into $dir"
  (cd "$dir" && npm install --no-audit --no-fund --loglevel=error >/dev/null)
}

# devpi-server 6.20.3 (another real Python package index, whose indexes live at
# /<user>/<index>/ with the simple API under +simple/) for the PyPI adapter's tests, into a
# virtualenv at ${ATR_DIST_DEVPI:-~/.cache/atr-dist/devpi}; each test initialises and runs
# its own on 127.0.0.1, offline.
ensure_devpi() {
  local dir="${ATR_DIST_DEVPI:-$HOME/.cache/atr-dist/devpi}"
  if [ -x "$dir/bin/devpi-server" ] && [ -x "$dir/bin/devpi-init" ]; then return 0; fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
  log "installing devpi-server 6.20.3 into $dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check devpi-server==6.20.3
}

# The checkers of deploy/ (scripts/check-deploy), installed only when it asks for them:
# Debian's prometheus (promtool: `check rules`, `test rules`; the package's own server is not
# started where policy-rc.d forbids it, and is not used) and docker-compose 1.29 (`config`
# parses and checks a compose file without a container engine).
ensure_promtool() {
  if command -v promtool >/dev/null; then return 0; fi
  apt_install prometheus
}

ensure_docker_compose() {
  if command -v docker-compose >/dev/null; then return 0; fi
  apt_install docker-compose
}

# kubernetes-validate 1.37.0 (Kubernetes 1.37's OpenAPI schemas, shipped in the package, used
# offline) into a virtualenv at ${ATR_DIST_KUBERNETES_VALIDATE:-~/.cache/atr-dist/kubernetes-validate};
# its PyYAML and jsonschema also run scripts/check-deploy.py.
ensure_kubernetes_validate() {
  local dir="${ATR_DIST_KUBERNETES_VALIDATE:-$HOME/.cache/atr-dist/kubernetes-validate}"
  if [ -x "$dir/bin/kubernetes-validate" ] && [ "$("$dir/bin/kubernetes-validate" --version 2>/dev/null)" = "1.37.0" ]; then return 0; fi
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
  log "installing kubernetes-validate 1.37.0 into $dir"
  python3 -m venv "$dir"
  "$dir/bin/pip" install --quiet --disable-pip-version-check kubernetes-validate==1.37.0
}

if [ "$#" -eq 0 ]; then set -- chromium verdaccio docker_registry pypiserver devpi prism; fi
known="chromium verdaccio docker_registry pypiserver devpi prism promtool docker_compose kubernetes_validate"
for program in "$@"; do
  case "$program" in
    chromium | verdaccio | docker_registry | pypiserver | devpi | prism) "ensure_$program" ;;
    promtool | docker_compose | kubernetes_validate) "ensure_$program" ;;
    *)
      log "unknown program $program; known: $known"
      exit 2
      ;;
  esac
done
