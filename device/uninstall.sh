#!/bin/bash
# Remove what device/install.sh installed.
#
#   sudo device/uninstall.sh            # keeps config, trust root, models and the user
#   sudo device/uninstall.sh --purge    # removes those too
#   device/uninstall.sh --root DIR      # the same inside a scratch root, no systemctl
set -eu

usage() {
    cat <<'EOF'
usage: uninstall.sh [--root DIR] [--purge]

  --root DIR   remove from DIR instead of / (no systemctl, no userdel)
  --purge      also remove /etc/edge-runtime (config, trust root, MQTT keys),
               /var/lib/edge-runtime (installed models and their state) and the
               edge-runtime user
EOF
}

log() { printf 'uninstall.sh: %s\n' "$*"; }
die() { printf 'uninstall.sh: error: %s\n' "$*" >&2; exit 1; }

ROOT=/
PURGE=0
while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

[ -d "$ROOT" ] || die "--root $ROOT: no such directory"
ROOT=$(cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then
    ROOT_MODE=0
    P=
    [ "$(id -u)" -eq 0 ] || die "a system uninstall must run as root (sudo), or use --root DIR"
else
    ROOT_MODE=1
    P=$ROOT
fi

UNIT_NAME=edge-runtime.service
UNIT=$P/etc/systemd/system/$UNIT_NAME

SYSTEMD_RUNNING=0
if [ "$ROOT_MODE" = 0 ] && command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        SYSTEMD_RUNNING=1
        systemctl disable --now --quiet "$UNIT_NAME" 2>/dev/null || true
        log "stopped and disabled $UNIT_NAME"
    else
        systemctl disable --quiet "$UNIT_NAME" 2>/dev/null || true
        log "disabled $UNIT_NAME (systemd is not running here)"
    fi
fi

remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf "$1"
        log "removed $1"
    fi
}

remove "$UNIT"
remove "$P/opt/edge-runtime"
# The factory bundle goes with the program; it is not user data.
remove "$P/usr/share/edge-runtime"
remove "$P/usr/share/doc/edge-runtime"

if [ "$SYSTEMD_RUNNING" = 1 ]; then
    systemctl daemon-reload
    systemctl reset-failed "$UNIT_NAME" 2>/dev/null || true
fi

if [ "$PURGE" = 1 ]; then
    remove "$P/etc/edge-runtime"
    remove "$P/var/lib/edge-runtime"
    # StateDirectory= under DynamicUser= would live here; harmless if absent.
    remove "$P/var/lib/private/edge-runtime"
    if [ "$ROOT_MODE" = 1 ]; then
        log "--root: not removing user edge-runtime (a system uninstall runs: userdel edge-runtime)"
    elif getent passwd edge-runtime >/dev/null; then
        userdel edge-runtime
        log "removed user edge-runtime"
    fi
else
    log "kept $P/etc/edge-runtime and $P/var/lib/edge-runtime (use --purge to remove them)"
fi
