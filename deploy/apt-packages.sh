#!/usr/bin/env bash
# Debian packages the tests and the demo use: real images shipped offline.
set -euo pipefail
pkgs=(dataset-fashion-mnist opencv-doc mate-backgrounds libmagic1 postgresql chromium chromium-driver)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
