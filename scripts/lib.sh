# Shared by the scripts in this folder (sourced, not run). Callers set LOG_PREFIX.

log() { printf '%s: %s\n' "${LOG_PREFIX:-atr-dist}" "$*" >&2; }

# Installs Debian packages when root; otherwise says in one line what to run, and stops.
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
