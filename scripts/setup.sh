#!/usr/bin/env bash
# Install what building and testing xDeepServe needs (Debian packages), only
# those missing. Safe to run repeatedly.
set -euo pipefail
PKGS="build-essential cmake pkg-config libpcre2-dev libjansson-dev libmicrohttpd-dev clang python3 python3-venv python3-pip curl libclang-rt-14-dev"
missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "installing:$missing" >&2
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >&2
fi
