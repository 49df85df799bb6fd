# Sourced by scripts/demo-update.sh and scripts/demo-fleet.sh (DEMO names the demo):
# the tools they need, a temporary directory removed at exit with every process started
# (KEEP=1 keeps it), free ports, step headers, and fraud v2 packed with the demo key.
VENV=${VENV:-.venv}
EDGE="$VENV/bin/edge-runtime"
PY="$VENV/bin/python"
for tool in "$EDGE" "$PY"; do
    [ -x "$tool" ] || { echo "$DEMO: $tool is missing; run 'make deps' first" >&2; exit 2; }
done
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQUITTO" ] || { echo "$DEMO: mosquitto is missing; run 'make system-deps'" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/tmp}/edge-$DEMO.XXXXXX")
pids=()
cleanup() {
    # the last started first (devices and consoles before the broker)
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill "${pids[$i]}" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "${KEEP:-}" = 1 ]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
step() { printf '\n== %s\n' "$*"; }

# pack_v2 CHUNK_SIZE: fraud v2 (the demo model, signed with the demo key) into $work/fraud-v2.bundle
pack_v2() {
    "$EDGE" bundle create device/factory/fraud.tflite --name fraud --version 2 \
        --sign-key device/demo-keys/signing.key --input-names input_0 --output-names output_0 \
        --golden-inputs device/factory/golden.npy --chunk-size "$1" -o "$work/fraud-v2.bundle"
}
