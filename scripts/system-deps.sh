#!/usr/bin/env bash
# Install the Debian packages the tests need, only those missing. Needs root (CI and these machines run as root).
set -euo pipefail
packages=(chromium postgresql redis-server debootstrap systemd-container nftables cryptsetup-bin iproute2 fonts-dejavu-core gcc libc6-dev rsync)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
