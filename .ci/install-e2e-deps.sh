#!/usr/bin/env bash
# Install the Debian packages that the end-to-end tests (tests/e2e, tests/ha) need: a Docker
# daemon and CLI (dockerd starts its own containerd), skopeo, podman, the reference registry
# (docker-registry: the proxy tests' upstream) and HAProxy (the HA tests' balancer), with their
# recommended packages (what the tests were developed against). Idempotent; run as root.
# The Python client `oras` comes from the project's `test` extra (pip install -e '.[test]').
set -euo pipefail

PACKAGES=(
  docker.io   # dockerd + docker CLI (Debian's 20.10), pulls in containerd and runc
  containerd
  runc
  skopeo
  podman
  uidmap      # newuidmap/newgidmap, wanted by podman/containers-storage
  tar
  docker-registry  # the reference registry (Distribution 2.8): the proxy's upstream in tests
  haproxy     # the load balancer in front of the replicas of the HA tests (tests/ha)
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Already provisioned (every package installed): skip `apt-get update`, the slow part.
installed=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)
if [ "$installed" -ne "${#PACKAGES[@]}" ]; then
  $SUDO apt-get update
  $SUDO apt-get install -y "${PACKAGES[@]}"
fi

for binary in dockerd docker containerd skopeo podman docker-registry haproxy; do
  command -v "$binary" >/dev/null || { echo "missing $binary after install" >&2; exit 1; }
done
echo "e2e dependencies installed: ${PACKAGES[*]}"
