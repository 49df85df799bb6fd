#!/usr/bin/env bash
# Emulated arm64 run of `edge-runtime score` on the demo model (issue 6, "aarch64 proof").
#
#   scripts/arm64-emulated.sh [CACHE_DIR]        (default /tmp/edge-arm64)
#
# 1. an arm64 Debian bookworm root from `debootstrap --foreign` (first stage only; the
#    downloaded .debs, python3 included, are unpacked with dpkg-deb -x: no second stage,
#    so no binfmt_misc registration and no chroot are needed);
# 2. the aarch64 wheels of [project].dependencies + the `device` extra, for CPython 3.11
#    (bookworm's), installed from this host with `pip install --platform ... --target`;
#    ai-edge-litert is pinned to the version in the host virtual environment so the
#    comparison isolates the architecture (override: LITERT_VERSION=x.y.z);
# 3. a fresh copy of edge_runtime/ from this checkout (refreshed on every run);
# 4. `models install` + `score --model fraud device/factory/sample.csv` run by the root's
#    python3.11 under `qemu-aarch64-static -L ROOT`, and the same two commands on the host
#    with .venv/bin/edge-runtime (override: HOST_EDGE=path);
# 5. prints the comparison and writes it to CACHE_DIR/result.json.
#
# Idempotent: steps 1 and 2 are cached behind stamp files (step 2 keyed on the requirement
# list); the stores and outputs of step 4 are recreated on every run.
# Needs root (apt-get for qemu-user-static/debootstrap if missing, debootstrap itself) and
# the Debian mirror and PyPI. Exit 77 = not feasible on this machine (reason on stderr).
set -euo pipefail

CACHE=$(realpath -m "${1:-/tmp/edge-arm64}")
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST_EDGE=${HOST_EDGE:-$REPO/.venv/bin/edge-runtime}
HOST_PY=$(dirname "$HOST_EDGE")/python
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PYVER=3.11
ROOT=$CACHE/root
SITE=$CACHE/site
SRC=$CACHE/src

log() { printf '== %s\n' "$*" >&2; }
infeasible() { printf 'arm64-emulated: infeasible: %s\n' "$*" >&2; exit 77; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.3f", b - a }'; }

T_START=$(now)
mkdir -p "$CACHE"

[ -x "$HOST_EDGE" ] || infeasible "no host edge-runtime at $HOST_EDGE (run 'make deps' or set HOST_EDGE)"

# --- 0. tools ---------------------------------------------------------------------------
if ! command -v qemu-aarch64-static >/dev/null || ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || infeasible "qemu-user-static/debootstrap missing and not root to install them"
    log "installing qemu-user-static debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static debootstrap >&2 \
        || infeasible "apt-get install qemu-user-static debootstrap failed"
fi
QEMU=$(command -v qemu-aarch64-static)

# --- 1. arm64 Debian root ---------------------------------------------------------------
if [ ! -f "$ROOT/.edge-root-ready" ]; then
    [ "$(id -u)" = 0 ] || infeasible "debootstrap needs root"
    rm -rf "$ROOT"
    log "debootstrap --foreign --arch=arm64 $SUITE (first stage) into $ROOT"
    debootstrap --foreign --arch=arm64 --variant=minbase --include=python3 \
        "$SUITE" "$ROOT" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1 \
        || { tail -20 "$CACHE/debootstrap.log" >&2; infeasible "debootstrap first stage failed (log: $CACHE/debootstrap.log)"; }
    # The first stage unpacks only the 'required' set; unpack every downloaded package
    # (python3 and its dependencies included) instead of running the second stage.
    log "unpacking $(find "$ROOT/var/cache/apt/archives" -name "*.deb" | wc -l) packages"
    for deb in "$ROOT"/var/cache/apt/archives/*.deb; do
        dpkg-deb -x "$deb" "$ROOT"
    done
    [ -x "$ROOT/usr/bin/python$PYVER" ] || infeasible "no python$PYVER in the arm64 root"
    touch "$ROOT/.edge-root-ready"
fi
EMU_PY=$ROOT/usr/bin/python$PYVER
# qemu-user 7.2 passes the host's x86 /proc/cpuinfo through to aarch64 programs, and the
# CPU detection inside ai-edge-litert >= 2.2 dereferences NULL on it (SIGSEGV in
# Interpreter()). With -L, qemu looks for ROOT/proc/cpuinfo first: give it a Pi 4's
# (4 x Cortex-A72).
mkdir -p "$ROOT/proc"
{
    for i in 0 1 2 3; do
        printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
        printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n'
} >"$ROOT/proc/cpuinfo"

# --- 2. aarch64 wheels ------------------------------------------------------------------
LITERT_VERSION=${LITERT_VERSION:-$("$HOST_PY" -c 'import importlib.metadata as m; print(m.version("ai-edge-litert"))')}
mapfile -t REQS < <("$HOST_PY" - "$REPO/pyproject.toml" "$LITERT_VERSION" <<'EOF'
import re, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
seen = []
for req in list(project.get("dependencies", [])) + list(project["optional-dependencies"]["device"]):
    if re.match(r"\s*ai-edge-litert\b", req):
        req = f"ai-edge-litert=={sys.argv[2]}"
    if req not in seen:
        seen.append(req)
print("\n".join(seen))
EOF
)
PLATFORMS=(--platform manylinux2014_aarch64)
for m in $(seq 17 36); do PLATFORMS+=(--platform "manylinux_2_${m}_aarch64"); done  # glibc <= 2.36 (bookworm)
REQ_KEY=$(printf '%s\n' "$PYVER" "${REQS[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$SITE/.edge-reqs" 2>/dev/null)" != "$REQ_KEY" ]; then
    rm -rf "$SITE"
    log "pip install --target $SITE (aarch64, cp$PYVER): ${REQS[*]}"
    "$HOST_PY" -m pip install -q --disable-pip-version-check --no-warn-conflicts \
        "${PLATFORMS[@]}" --only-binary=:all: --python-version "$PYVER" --implementation cp \
        --target "$SITE" "${REQS[@]}" >&2 \
        || infeasible "no complete set of aarch64 wheels for: ${REQS[*]}"
    echo "$REQ_KEY" >"$SITE/.edge-reqs"
fi

# --- 3. the project itself ----------------------------------------------------------------
rm -rf "$SRC"
mkdir -p "$SRC"
cp -r "$REPO/edge_runtime" "$SRC/"
find "$SRC" -name __pycache__ -prune -exec rm -rf {} +
cat >"$CACHE/edge-runtime.py" <<'EOF'
# What the `edge-runtime` console script does (edge_runtime.cli has no __main__.py).
import sys
from edge_runtime.cli import main
sys.exit(main())
EOF

emu() { PYTHONPATH="$SRC:$SITE" PYTHONDONTWRITEBYTECODE=1 "$QEMU" -L "$ROOT" "$EMU_PY" "$@"; }

# --- 4. run both ------------------------------------------------------------------------
cd "$REPO"
DEMO_ARGS=(--root device/demo-keys/root.json --factory device/factory)
rm -rf "$CACHE/host-store" "$CACHE/arm-store" "$CACHE/host.npy" "$CACHE/arm.npy" "$CACHE/result.json"

log "emulated: probe"
PROBE=$(emu -c '
import importlib.metadata as m, json, platform, sys
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(),
                  "ai_edge_litert": m.version("ai-edge-litert"), "numpy": m.version("numpy")}))')
echo "$PROBE" >"$CACHE/probe.json"

log "emulated: models install"
emu "$CACHE/edge-runtime.py" models install device/factory/fraud.bundle --store "$CACHE/arm-store" "${DEMO_ARGS[@]}" >&2
log "emulated: score"
T0=$(now)
emu "$CACHE/edge-runtime.py" score --model fraud device/factory/sample.csv \
    --store "$CACHE/arm-store" "${DEMO_ARGS[@]}" -o "$CACHE/arm.npy" >&2
T_EMU_SCORE=$(elapsed "$T0")

log "host: models install + score"
"$HOST_EDGE" models install device/factory/fraud.bundle --store "$CACHE/host-store" "${DEMO_ARGS[@]}" >&2
T0=$(now)
"$HOST_EDGE" score --model fraud device/factory/sample.csv \
    --store "$CACHE/host-store" "${DEMO_ARGS[@]}" -o "$CACHE/host.npy" >&2
T_HOST_SCORE=$(elapsed "$T0")

# --- 5. compare -------------------------------------------------------------------------
T_TOTAL=$(elapsed "$T_START")
"$HOST_PY" - "$CACHE" "$T_EMU_SCORE" "$T_HOST_SCORE" "$T_TOTAL" <<'EOF'
import json, platform, sys, importlib.metadata as m
from pathlib import Path
import numpy as np
cache = Path(sys.argv[1])
arm = np.load(cache / "arm.npy", allow_pickle=False)
host = np.load(cache / "host.npy", allow_pickle=False)
probe = json.loads((cache / "probe.json").read_text())
result = {
    "emulated": probe,
    "host": {"machine": platform.machine(), "python": platform.python_version(),
             "ai_edge_litert": m.version("ai-edge-litert"), "numpy": m.version("numpy")},
    "rows": [int(arm.shape[0]), int(host.shape[0])],
    "shape_equal": arm.shape == host.shape,
    "max_abs_diff": float(np.max(np.abs(arm.astype(np.float64) - host.astype(np.float64))))
    if arm.shape == host.shape else None,
    "emulated_score_seconds": round(float(sys.argv[2]), 2),
    "host_score_seconds": round(float(sys.argv[3]), 2),
    "script_seconds": round(float(sys.argv[4]), 1),
}
(cache / "result.json").write_text(json.dumps(result, indent=2) + "\n")
e, h = result["emulated"], result["host"]
print(f"emulated: {e['machine']} python {e['python']} ai-edge-litert {e['ai_edge_litert']} numpy {e['numpy']}")
print(f"host:     {h['machine']} python {h['python']} ai-edge-litert {h['ai_edge_litert']} numpy {h['numpy']}")
print(f"rows: {result['rows'][0]} emulated / {result['rows'][1]} host")
print(f"max abs difference: {result['max_abs_diff']}")
print(f"score wall time: {result['emulated_score_seconds']} s emulated, {result['host_score_seconds']} s host")
print(f"this run: {result['script_seconds']} s; result in {cache / 'result.json'}")
EOF
