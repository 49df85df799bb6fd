#!/bin/bash
# Install edge-runtime on a Raspberry Pi (or any 64-bit Debian-like system with systemd).
#
#   sudo device/install.sh --trust-root root.json [--factory MODEL.bundle]
#   device/install.sh --root /tmp/scratch --trust-root root.json    # a dry tree, no root needed
#   sudo device/install.sh --trust-root root.json --wheelhouse /media/usb/wheels   # no internet
#
# Idempotent: a second run with the same inputs changes no file, and it never overwrites
# /etc/edge-runtime/config.toml once it exists. See docs/raspberry-pi.md.
set -eu
umask 022

usage() {
    cat <<'EOF'
usage: install.sh --trust-root FILE | --device-dir DIR [--factory BUNDLE]... [--root DIR] [--wheel PATH]
                  [--wheelhouse DIR] [--python PYTHON] [--with-onnx] [--replace-trust-root]
                  [--no-start]

  --trust-root FILE      the fleet's trust root (root.json from `edge-runtime keys generate`);
                         copied to /etc/edge-runtime/root.json. Required.
  --factory BUNDLE       the operator's own factory model (repeat for several): verified
                         against --trust-root before anything is pinned or copied, installed
                         as /usr/share/edge-runtime/factory/NAME.bundle with NAME from its
                         signed manifest (never the file name). Without it, the demo bundles
                         of device/factory/ are installed only if --trust-root trusts their
                         key (the demo root does; your own root does not).
  --device-dir DIR       one device's directory from `edge-runtime fleet provision`
                         (OUT/devices/<id>/): its config.toml, its MQTT certificate and key
                         (/etc/edge-runtime/mqtt/, the key readable by the service only) and
                         its root.json (the default for --trust-root). The config replaces
                         the shipped example, never a config edited on the device.
  --replace-trust-root   allow replacing an existing, different /etc/edge-runtime/root.json
  --root DIR             install into DIR instead of /: no user creation, no chown, no
                         systemctl (for checking the tree; the venv there runs only on this host)
  --wheel PATH           what to install: an edge-runtime wheel, or a source directory
                         (default: the repository this script belongs to)
  --wheelhouse DIR       install offline: pip uses only the wheels in DIR (--no-index
                         --find-links DIR), and the edge-runtime wheel comes from DIR unless
                         --wheel says otherwise. Build DIR on a connected machine with
                         scripts/build-wheelhouse.sh (docs/operations.md).
  --python PYTHON        interpreter for the virtual environment, 3.11 or newer (default python3)
  --with-onnx            also install onnxruntime (the 'onnx' extra), so the device can run
                         ONNX bundles: the ones edge-convert writes with --fallback-onnx when
                         a model does not convert to TFLite. Without it such bundles are refused
                         at install, with that reason shown in `fleet status`.
  --no-start             enable the service but do not start or restart it
EOF
}

log() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
REPO_DIR=$(dirname "$SCRIPT_DIR")

ROOT=/
TRUST_ROOT=
WHEEL=$REPO_DIR
PYTHON=python3
REPLACE_TRUST_ROOT=0
START=1
EXTRAS=device
FACTORY_BUNDLES=()
WHEELHOUSE=
WHEEL_GIVEN=0
DEVICE_DIR=

while [ $# -gt 0 ]; do
    case "$1" in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#*=}; shift ;;
        --trust-root) [ $# -ge 2 ] || die "--trust-root needs a file"; TRUST_ROOT=$2; shift 2 ;;
        --trust-root=*) TRUST_ROOT=${1#*=}; shift ;;
        --wheel) [ $# -ge 2 ] || die "--wheel needs a path"; WHEEL=$2; WHEEL_GIVEN=1; shift 2 ;;
        --wheel=*) WHEEL=${1#*=}; WHEEL_GIVEN=1; shift ;;
        --factory) [ $# -ge 2 ] || die "--factory needs a bundle"; FACTORY_BUNDLES+=("$2"); shift 2 ;;
        --factory=*) FACTORY_BUNDLES+=("${1#*=}"); shift ;;
        --wheelhouse) [ $# -ge 2 ] || die "--wheelhouse needs a directory"; WHEELHOUSE=$2; shift 2 ;;
        --wheelhouse=*) WHEELHOUSE=${1#*=}; shift ;;
        --device-dir) [ $# -ge 2 ] || die "--device-dir needs a directory"; DEVICE_DIR=$2; shift 2 ;;
        --device-dir=*) DEVICE_DIR=${1#*=}; shift ;;
        --python) [ $# -ge 2 ] || die "--python needs an interpreter"; PYTHON=$2; shift 2 ;;
        --python=*) PYTHON=${1#*=}; shift ;;
        --replace-trust-root) REPLACE_TRUST_ROOT=1; shift ;;
        --no-start) START=0; shift ;;
        --with-onnx) EXTRAS=device,onnx; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

DEVICE_KEY=
if [ -n "$DEVICE_DIR" ]; then
    [ -f "$DEVICE_DIR/config.toml" ] && [ -f "$DEVICE_DIR/root.json" ] && [ -f "$DEVICE_DIR/mqtt/ca.crt" ] \
        || die "--device-dir $DEVICE_DIR: expected config.toml, root.json and mqtt/ca.crt (a directory OUT/devices/<id>/ of fleet provision)"
    set -- "$DEVICE_DIR"/mqtt/*.key
    [ $# -eq 1 ] && [ -f "$1" ] && [ -f "${1%.key}.crt" ] \
        || die "--device-dir $DEVICE_DIR: expected exactly one mqtt/<id>.key with its mqtt/<id>.crt"
    DEVICE_KEY=$1
    if [ -z "$TRUST_ROOT" ]; then
        TRUST_ROOT=$DEVICE_DIR/root.json
    elif ! cmp -s "$TRUST_ROOT" "$DEVICE_DIR/root.json"; then
        die "--trust-root $TRUST_ROOT differs from the provisioned $DEVICE_DIR/root.json"
    fi
fi
[ -n "$TRUST_ROOT" ] || { usage >&2; die "--trust-root FILE is required"; }
[ -f "$TRUST_ROOT" ] || die "trust root $TRUST_ROOT: no such file"
for bundle in ${FACTORY_BUNDLES[@]+"${FACTORY_BUNDLES[@]}"}; do
    [ -f "$bundle" ] || die "--factory $bundle: no such file"
done
PIP_SOURCE=()   # extra pip arguments: none online, the wheelhouse only offline
if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || die "--wheelhouse $WHEELHOUSE: no such directory"
    WHEELHOUSE=$(cd "$WHEELHOUSE" && pwd)
    PIP_SOURCE=(--no-index --find-links "$WHEELHOUSE")
    if [ "$WHEEL_GIVEN" = 0 ]; then
        set -- "$WHEELHOUSE"/edge_runtime-*.whl
        [ $# -eq 1 ] && [ -f "$1" ] \
            || die "--wheelhouse $WHEELHOUSE must hold exactly one edge_runtime-*.whl (found: $*); or pass --wheel"
        WHEEL=$1
    fi
fi
[ -e "$WHEEL" ] || die "--wheel $WHEEL: no such file or directory"

# Canonical absolute paths; "--root /" is a real install.
ROOT=$(mkdir -p "$ROOT" && cd "$ROOT" && pwd)
if [ "$ROOT" = / ]; then
    ROOT_MODE=0
    P=
    [ "$(id -u)" -eq 0 ] || die "a system install must run as root (sudo), or use --root DIR"
else
    ROOT_MODE=1
    P=$ROOT
fi

SERVICE_USER=edge-runtime
OPT_DIR=$P/opt/edge-runtime
VENV=$OPT_DIR/venv
WHEEL_DIR=$OPT_DIR/wheels
ETC_DIR=$P/etc/edge-runtime
STATE_DIR=$P/var/lib/edge-runtime
STORE_DIR=$STATE_DIR/models
FACTORY_DIR=$P/usr/share/edge-runtime/factory
DOC_DIR=$P/usr/share/doc/edge-runtime
UNIT_DIR=$P/etc/systemd/system
UNIT_NAME=edge-runtime.service

CHANGED=0      # anything the running service would notice
UNIT_CHANGED=0

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

# copy_if_changed SRC DEST MODE: atomic copy unless DEST already has the same bytes;
# returns 0 if it copied, 1 if DEST was already identical. The mode is always enforced.
copy_if_changed() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        chmod "$3" "$2"
        return 1
    fi
    cp "$1" "$2.tmp.$$"
    chmod "$3" "$2.tmp.$$"
    mv -f "$2.tmp.$$" "$2"
    return 0
}

# make_dir DIR MODE [OWNER:GROUP]: ownership only applies to a system install.
make_dir() {
    mkdir -p "$1"
    chmod "$2" "$1"
    if [ $# -ge 3 ] && [ "$ROOT_MODE" = 0 ]; then
        chown "$3" "$1"
    fi
}

# stage_source SRC DEST: copy a source tree without its VCS data, virtual environments
# and build output. In a git checkout, exactly the files git would not ignore.
stage_source() {
    if [ -e "$1/.git" ] && command -v git >/dev/null 2>&1 \
        && git -C "$1" ls-files -z --cached --others --exclude-standard >"$TMP/files" 2>/dev/null; then
        tar -C "$1" --null --files-from="$TMP/files" --ignore-failed-read -cf - 2>/dev/null \
            | tar -C "$2" -xf -
    else
        tar -C "$1" -cf - --exclude=./.git --exclude='./.venv*' --exclude=./venv \
            --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ \
            --exclude=.mypy_cache --exclude=.pytest_cache --exclude=.ruff_cache . \
            | tar -C "$2" -xf -
    fi
}

# --- interpreter --------------------------------------------------------------------------
command -v "$PYTHON" >/dev/null 2>&1 || die "python $PYTHON not found (apt install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -c 'import sys; print(sys.version.split()[0])'); edge-runtime needs Python 3.11 or newer"
# A 32-bit Raspberry Pi OS on a Pi 4/5 runs a 64-bit kernel, so uname says aarch64 while
# the userland (and pip's wheel tags) are armhf: ask the interpreter for its pointer size.
BITS=$("$PYTHON" -c 'import struct; print(8 * struct.calcsize("P"))')
MACHINE=$("$PYTHON" -c 'import platform; print(platform.machine())')
if [ "$BITS" != 64 ]; then
    die "$PYTHON is a $BITS-bit interpreter ($MACHINE kernel): ai-edge-litert has no 32-bit ARM wheel; install the 64-bit Raspberry Pi OS"
fi

# The service runs with ProtectHome=yes (and a user that cannot read /root): a venv whose
# base interpreter lives in a home directory (pyenv, conda) would not start.
BASE_PREFIX=$("$PYTHON" -c 'import os, sys; print(os.path.realpath(sys.base_prefix))')
case "$BASE_PREFIX/" in
    /root/*|/home/*|/run/user/*)
        if [ "$ROOT_MODE" = 0 ]; then
            die "$PYTHON lives in $BASE_PREFIX, which the service cannot see (ProtectHome=yes); use the system python3"
        fi
        log "--root: note that $PYTHON lives in $BASE_PREFIX; a system install refuses that (ProtectHome=yes)" ;;
esac

# --- the trust root -----------------------------------------------------------------------
if grep -q "PRIVATE KEY" "$TRUST_ROOT"; then
    die "$TRUST_ROOT is a private signing key, not a trust root: a device only ever gets root.json"
fi
# Re-pinning a device is a deliberate act, never a side effect of re-running the installer.
if [ -f "$ETC_DIR/root.json" ] && ! cmp -s "$TRUST_ROOT" "$ETC_DIR/root.json" && [ "$REPLACE_TRUST_ROOT" = 0 ]; then
    die "$ETC_DIR/root.json exists and differs from $TRUST_ROOT; pass --replace-trust-root to re-pin the device"
fi

# --- user ---------------------------------------------------------------------------------
USERADD="useradd --system --user-group --home-dir /var/lib/edge-runtime --no-create-home --shell /usr/sbin/nologin --comment 'edge-runtime inference service' $SERVICE_USER"
if [ "$ROOT_MODE" = 1 ]; then
    log "--root: not creating system user $SERVICE_USER (a system install runs: $USERADD)"
    log "--root: not changing ownership (a system install gives $STATE_DIR to $SERVICE_USER)"
elif getent passwd "$SERVICE_USER" >/dev/null; then
    log "user $SERVICE_USER exists"
else
    eval "$USERADD"
    log "created system user $SERVICE_USER"
fi

# --- directories --------------------------------------------------------------------------
make_dir "$OPT_DIR" 0755 root:root
make_dir "$WHEEL_DIR" 0755 root:root
# Root-owned and world-readable like the unit's ConfigurationDirectoryMode=0755; the
# service reads config.toml through its group.
make_dir "$ETC_DIR" 0755 root:root
# MQTT client certificates and keys: readable by the service's group only.
make_dir "$ETC_DIR/mqtt" 0750 "root:$SERVICE_USER"
# Matches StateDirectoryMode=0750; systemd also chowns it to the service user at start.
make_dir "$STATE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
make_dir "$STORE_DIR" 0750 "$SERVICE_USER:$SERVICE_USER"
make_dir "$FACTORY_DIR" 0755 root:root
make_dir "$UNIT_DIR" 0755

# --- virtual environment with the device extra only ---------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV" || die "cannot create a venv with $PYTHON (apt install python3-venv)"
    log "created virtual environment $VENV"
fi
VENV_PY=$VENV/bin/python

if [ -d "$WHEEL" ]; then
    # Build from a clean copy so the source tree gets no build/ or *.egg-info, and with a
    # fixed SOURCE_DATE_EPOCH so the same source gives the same wheel bytes every time.
    mkdir "$TMP/src" "$TMP/dist"
    stage_source "$WHEEL" "$TMP/src"
    log "building the edge-runtime wheel from $WHEEL"
    SOURCE_DATE_EPOCH=315532800 "$VENV_PY" -m pip wheel --quiet --no-deps --no-cache-dir \
        ${PIP_SOURCE[@]+"${PIP_SOURCE[@]}"} --wheel-dir "$TMP/dist" "$TMP/src"
    set -- "$TMP"/dist/edge_runtime-*.whl
    if [ $# -ne 1 ] || [ ! -f "$1" ]; then
        die "building the wheel from $WHEEL gave: $*"
    fi
    BUILT=$1
else
    case "$WHEEL" in *.whl) ;; *) die "--wheel $WHEEL is neither a directory nor a .whl" ;; esac
    BUILT=$WHEEL
fi
WHEEL_FILE=$WHEEL_DIR/$(basename "$BUILT")
copy_if_changed "$BUILT" "$WHEEL_FILE" 0644 || true
for old in "$WHEEL_DIR"/*.whl; do
    [ "$old" = "$WHEEL_FILE" ] || rm -f "$old"
done

STAMP=$VENV/.edge-runtime-installed
WANT="$(sha256sum "$WHEEL_FILE" | cut -d' ' -f1) $EXTRAS"
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && "$VENV_PY" -m pip check >/dev/null 2>&1; then
    log "virtual environment up to date ($(basename "$WHEEL_FILE"))"
else
    log "installing $(basename "$WHEEL_FILE")[$EXTRAS] into $VENV"
    "$VENV_PY" -m pip uninstall --quiet --yes edge-runtime >/dev/null 2>&1 || true
    if [ -n "$WHEELHOUSE" ]; then
        # Offline: the wheelhouse is the only source; pip never looks for an index.
        log "offline: pip install --no-index --find-links $WHEELHOUSE"
        "$VENV_PY" -m pip install --quiet --no-cache-dir "${PIP_SOURCE[@]}" "${WHEEL_FILE}[$EXTRAS]" \
            || die "the wheelhouse $WHEELHOUSE lacks a wheel the line above names (for this Python and CPU?); build it with scripts/build-wheelhouse.sh for the device's platform"
    else
        "$VENV_PY" -m pip install --quiet --no-cache-dir "${WHEEL_FILE}[$EXTRAS]"
    fi
    # The device install must never pull TensorFlow (SPEC section 1).
    TF=$("$VENV_PY" -c 'import importlib.metadata as m; print(" ".join(sorted({d.metadata["Name"] for d in m.distributions() if d.metadata["Name"].lower().startswith(("tensorflow", "tf-keras", "tf_keras"))})))')
    [ -z "$TF" ] || die "the device venv contains $TF; the device extra must not pull TensorFlow"
    printf '%s\n' "$WANT" >"$STAMP"
    CHANGED=1
fi

# Only now can the root be checked properly: its signatures, with our own code.
if ! "$VENV/bin/edge-runtime" keys show "$TRUST_ROOT" >"$TMP/root.txt" 2>&1 \
    || ! grep -q "trust root version" "$TMP/root.txt"; then
    cat "$TMP/root.txt" >&2
    die "$TRUST_ROOT is not a valid trust root"
fi

# --- factory bundle(s): verified against the root before anything is pinned or copied -----
# verify_bundle BUNDLE: full verification (layout, signature by a key of --trust-root, every
# hash) with the code just installed; prints the model name from the signed manifest.
verify_bundle() {
    "$VENV/bin/edge-runtime" bundle verify "$1" --root "$TRUST_ROOT" --json >"$TMP/manifest.json" 2>"$TMP/verify.err" \
        || return 1
    "$VENV_PY" -c 'import json, sys; print(json.load(open(sys.argv[1]))["name"])' "$TMP/manifest.json"
}
STAGED=()       # "NAME<TAB>staged copy" of every bundle to install
if [ ${#FACTORY_BUNDLES[@]} -gt 0 ]; then
    for bundle in "${FACTORY_BUNDLES[@]}"; do
        # Verify a private copy and install that copy: the file cannot change in between.
        n=${#STAGED[@]}
        cp "$bundle" "$TMP/factory.$n"
        if ! name=$(verify_bundle "$TMP/factory.$n"); then
            cat "$TMP/verify.err" >&2
            die "--factory $bundle does not verify against $TRUST_ROOT; nothing was installed from it (is it signed by a key that root trusts?)"
        fi
        # The manifest's own check already bounds the name; refuse anything else before using it as a path.
        case "$name" in ''|.*|*[!A-Za-z0-9._-]*) die "--factory $bundle: unusable model name '$name'" ;; esac
        for entry in ${STAGED[@]+"${STAGED[@]}"}; do
            [ "${entry%%	*}" != "$name" ] || die "two --factory bundles hold model '$name'; give one per model"
        done
        STAGED+=("$name	$TMP/factory.$n")
        log "factory bundle $bundle verified: model '$name' (name from its signed manifest)"
    done
else
    for bundle in "$SCRIPT_DIR"/factory/*.bundle; do
        [ -f "$bundle" ] || continue
        if name=$(verify_bundle "$bundle"); then
            STAGED+=("$name	$bundle")
        else
            log "not installing the demo factory bundle $(basename "$bundle"): $TRUST_ROOT does not trust the key that signed it (the demo key)"
        fi
    done
    if [ ${#STAGED[@]} -eq 0 ]; then
        log "no factory model installed: pass --factory BUNDLE (your model, signed by a key $TRUST_ROOT trusts); until an update arrives the device serves nothing"
    fi
fi

if copy_if_changed "$TRUST_ROOT" "$ETC_DIR/root.json" 0644; then
    log "pinned trust root: $(head -n 1 "$TMP/root.txt")"
    CHANGED=1
fi
# The store finds a factory bundle as <factory>/<model name>.bundle: the name is the manifest's.
for entry in ${STAGED[@]+"${STAGED[@]}"}; do
    name=${entry%%	*}
    if copy_if_changed "${entry#*	}" "$FACTORY_DIR/$name.bundle" 0644; then
        log "factory bundle $name.bundle installed"
        CHANGED=1
    fi
done
# A factory bundle the pinned root does not trust can never be served: say so, keep the file
# (the factory is never deleted by the installer; remove it by hand if it is a leftover).
INSTALLED=" "
for entry in ${STAGED[@]+"${STAGED[@]}"}; do INSTALLED="$INSTALLED${entry%%	*}.bundle "; done
for bundle in "$FACTORY_DIR"/*.bundle; do
    [ -f "$bundle" ] || continue
    case "$INSTALLED" in *" $(basename "$bundle") "*) continue ;; esac   # verified above
    verify_bundle "$bundle" >/dev/null \
        || log "warning: $bundle does not verify against the pinned root; the device will not serve it"
done

# --- configuration: written once, never overwritten ---------------------------------------
if [ -n "$DEVICE_DIR" ]; then
    # The device's MQTT identity: the certificate is public, the key the service's alone.
    DEVICE_ID=$(basename "$DEVICE_KEY" .key)
    copy_if_changed "$DEVICE_DIR/mqtt/ca.crt" "$ETC_DIR/mqtt/ca.crt" 0644 && CHANGED=1
    copy_if_changed "${DEVICE_KEY%.key}.crt" "$ETC_DIR/mqtt/$DEVICE_ID.crt" 0644 && CHANGED=1
    copy_if_changed "$DEVICE_KEY" "$ETC_DIR/mqtt/$DEVICE_ID.key" 0640 && CHANGED=1
    if [ "$ROOT_MODE" = 0 ]; then
        chown "root:$SERVICE_USER" "$ETC_DIR/mqtt/$DEVICE_ID.key"
    fi
    log "MQTT identity $DEVICE_ID in $ETC_DIR/mqtt/"
fi
if [ -n "$DEVICE_DIR" ] && { [ ! -e "$ETC_DIR/config.toml" ] || cmp -s "$ETC_DIR/config.toml" "$SCRIPT_DIR/config.toml"; }; then
    # A new device, or one still on the shipped example: the provisioned config is its config.
    if copy_if_changed "$DEVICE_DIR/config.toml" "$ETC_DIR/config.toml" 0640; then
        log "wrote $ETC_DIR/config.toml from $DEVICE_DIR (device $DEVICE_ID)"
        CHANGED=1
    fi
elif [ -e "$ETC_DIR/config.toml" ]; then
    if [ -n "$DEVICE_DIR" ] && ! cmp -s "$ETC_DIR/config.toml" "$DEVICE_DIR/config.toml"; then
        log "keeping existing $ETC_DIR/config.toml, edited on this device (the provisioned one: $DEVICE_DIR/config.toml)"
    else
        log "keeping existing $ETC_DIR/config.toml"
    fi
else
    copy_if_changed "$SCRIPT_DIR/config.toml" "$ETC_DIR/config.toml" 0640 || true
    log "wrote $ETC_DIR/config.toml (edit it, then: systemctl restart edge-runtime)"
    CHANGED=1
fi
if [ "$ROOT_MODE" = 0 ]; then
    chown "root:$SERVICE_USER" "$ETC_DIR/config.toml"
fi

# --- docs and the unit --------------------------------------------------------------------
if [ -f "$REPO_DIR/docs/raspberry-pi.md" ]; then
    make_dir "$DOC_DIR" 0755 root:root
    copy_if_changed "$REPO_DIR/docs/raspberry-pi.md" "$DOC_DIR/raspberry-pi.md" 0644 || true
fi
if copy_if_changed "$REPO_DIR/systemd/$UNIT_NAME" "$UNIT_DIR/$UNIT_NAME" 0644; then
    log "installed $UNIT_DIR/$UNIT_NAME"
    UNIT_CHANGED=1
    CHANGED=1
fi

# --- systemd ------------------------------------------------------------------------------
if [ "$ROOT_MODE" = 1 ]; then
    log "--root: not running systemctl (a system install runs: systemctl daemon-reload; systemctl enable --now $UNIT_NAME)"
    log "done: tree in $ROOT"
    exit 0
fi
if [ ! -d /run/systemd/system ]; then
    # A chroot or an image being built: enabling only creates the wants/ symlink.
    systemctl enable --quiet "$UNIT_NAME"
    log "systemd is not running here: enabled $UNIT_NAME, it starts on the next boot"
    exit 0
fi
if [ "$UNIT_CHANGED" = 1 ]; then
    systemctl daemon-reload
fi
systemctl enable --quiet "$UNIT_NAME"
if [ "$START" = 0 ]; then
    log "enabled $UNIT_NAME; not started (--no-start)"
elif systemctl is-active --quiet "$UNIT_NAME"; then
    if [ "$CHANGED" = 1 ]; then
        systemctl restart "$UNIT_NAME" || die "restart failed: journalctl -u edge-runtime -n 50"
        log "restarted $UNIT_NAME"
    else
        log "$UNIT_NAME running, nothing changed"
    fi
else
    systemctl start "$UNIT_NAME" || die "start failed: journalctl -u edge-runtime -n 50"
    log "started $UNIT_NAME"
fi
log "check: systemctl status edge-runtime; curl -s localhost:8000/v2/health/ready"
