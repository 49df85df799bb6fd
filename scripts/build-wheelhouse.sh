#!/usr/bin/env bash
# Build a wheelhouse for offline device installs, on a machine with internet access.
#
#   scripts/build-wheelhouse.sh OUT_DIR [--with-onnx] [--python-version 3.11]
#                               [--platform manylinux_2_36_aarch64] [--native]
#
# OUT_DIR receives the edge-runtime wheel built from this checkout and every wheel its
# `device` extra needs (plus onnxruntime with --with-onnx) for the target: by default a
# Raspberry Pi on 64-bit Raspberry Pi OS Bookworm (CPython 3.11, glibc 2.36, aarch64), so it
# can run on any build host. --native downloads for the machine it runs on instead (run it
# on a Pi of the same OS to also build wheels for packages that publish only sources).
# Copy OUT_DIR to the device (USB stick, scp) and run:
#   sudo device/install.sh --trust-root root.json --wheelhouse OUT_DIR [--with-onnx]
# See docs/operations.md. Never run by the tests (it needs the network).
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

out=
python_version=3.11
platform=manylinux_2_36_aarch64
extras=device
native=0
while [ $# -gt 0 ]; do
    case "$1" in
        --with-onnx) extras=device,onnx; shift ;;
        --python-version) python_version=$2; shift 2 ;;
        --platform) platform=$2; shift 2 ;;
        --native) native=1; shift ;;
        -h|--help) usage; exit 0 ;;
        -*) usage >&2; echo "build-wheelhouse.sh: unknown option $1" >&2; exit 2 ;;
        *) [ -z "$out" ] || { usage >&2; exit 2; }; out=$1; shift ;;
    esac
done
[ -n "$out" ] || { usage >&2; exit 2; }

repo=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
mkdir -p "$out"
out=$(cd "$out" && pwd)

# The edge-runtime wheel itself is pure Python: build it here, with the same fixed
# SOURCE_DATE_EPOCH as install.sh so the same checkout gives the same bytes.
rm -f "$out"/edge_runtime-*.whl
SOURCE_DATE_EPOCH=315532800 "$python" -m pip wheel --quiet --no-deps --wheel-dir "$out" "$repo"
wheel=$(ls "$out"/edge_runtime-*.whl)

if [ "$native" = 1 ]; then
    "$python" -m pip wheel --wheel-dir "$out" "${wheel}[$extras]"
else
    # Binary wheels only: pip cannot build a source package for another CPU.
    "$python" -m pip download --dest "$out" --only-binary=:all: --implementation cp \
        --python-version "$python_version" --platform "$platform" "${wheel}[$extras]"
fi
echo "wheelhouse $out: $(ls "$out"/*.whl | wc -l) wheels for ${extras} ($([ "$native" = 1 ] && echo "this machine" || echo "CPython $python_version, $platform"))"
