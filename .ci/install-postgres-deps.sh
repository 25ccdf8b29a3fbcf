#!/usr/bin/env bash
# Install Debian's PostgreSQL server for the metadata tests on PostgreSQL: the tests start their
# own cluster (initdb, pg_ctl from /usr/lib/postgresql/<major>/bin) in a temporary folder as the
# package's `postgres` account, on a unix socket. The packaged cluster service is not used.
# Idempotent; run as root (or with sudo).
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

PACKAGES=(postgresql util-linux)  # util-linux: runuser

export DEBIAN_FRONTEND=noninteractive
# Already provisioned (every package installed): skip `apt-get update`, the slow part.
installed=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)
if [ "$installed" -ne "${#PACKAGES[@]}" ]; then
  $SUDO apt-get update
  $SUDO apt-get install -y "${PACKAGES[@]}"
fi

ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null || { echo "missing pg_ctl after install" >&2; exit 1; }
getent passwd postgres >/dev/null || { echo "missing the postgres account after install" >&2; exit 1; }
echo "postgres dependencies installed: $(ls /usr/lib/postgresql)"
