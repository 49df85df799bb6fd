#!/usr/bin/env bash
# Debian packages the tests need: mosquitto (MQTT broker started by the test fixtures),
# systemd (systemd-analyze verify/security on the unit file), a C compiler (the tests build a
# minimal TFLite external delegate from tests/inference/delegate_src) and chromium (the fleet
# console's pages, looked at headless by tests/fleet/console). Installs only what is missing.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v cc >/dev/null 2>&1 || need+=(gcc libc6-dev)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system packages: installing ${need[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${need[@]}"
