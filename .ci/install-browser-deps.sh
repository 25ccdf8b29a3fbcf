#!/usr/bin/env bash
# Install Debian's Chromium and its WebDriver for the console's browser tests (tests/console):
# the tests drive /usr/bin/chromium through /usr/bin/chromedriver with Selenium, headless, so no
# browser is ever downloaded at test time. Idempotent; run as root (or with sudo).
set -euo pipefail

PACKAGES=(chromium chromium-driver fonts-dejavu-core)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi

export DEBIAN_FRONTEND=noninteractive
# Already provisioned (every package installed): skip `apt-get update`, the slow part.
installed=$(dpkg-query -W -f='${Status}\n' "${PACKAGES[@]}" 2>/dev/null | grep -c '^install ok installed$' || true)
if [ "$installed" -ne "${#PACKAGES[@]}" ]; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${PACKAGES[@]}"
fi

for binary in chromium chromedriver; do
  command -v "$binary" >/dev/null || { echo "missing $binary after install" >&2; exit 1; }
done
echo "browser dependencies installed: ${PACKAGES[*]}"
