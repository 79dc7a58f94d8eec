#!/usr/bin/env bash
# Makes sure the services atr-dist's tests (and embedded defaults) need are running on
# loopback: Redis on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432 with trust auth.
# Idempotent: what already runs is left alone. Installs Debian's packages when missing (as
# root); otherwise says in one line what to run.
set -euo pipefail

LOG_PREFIX=services
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 100); do
    port_open "$1" && return 0
    sleep 0.1
  done
  log "nothing listens on 127.0.0.1:$1 after 10 s"
  return 1
}

ensure_redis() {
  if port_open 6379; then return 0; fi
  command -v redis-server >/dev/null || apt_install redis-server
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  log "starting redis-server on 127.0.0.1:6379"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /tmp --logfile /tmp/atr-dist-redis.log
  wait_port 6379
}

ensure_postgres() {
  if port_open 5432; then return 0; fi
  local installed_now=""
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
    installed_now=1
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  if [ -n "$installed_now" ]; then
    # Our own fresh cluster, used only for tests on loopback: trust local TCP connections.
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
    sed -i -E 's/^(local\s+all\s+postgres\s+)\S+/\1trust/' "$hba"
  fi
  log "starting PostgreSQL $version on 127.0.0.1:5432"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432
}

ensure_redis
ensure_postgres
