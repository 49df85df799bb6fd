#!/usr/bin/env bash
# make demo-update: a signed model update over MQTT, end to end, on this machine.
#
# Packs version 2 of the demo model (signed with the demo key), starts a private mosquitto
# and the daemon on a temporary store (serving the factory bundle, v1), publishes v2 with
# `edge-runtime fleet publish`, and shows the device switch versions: the fleet status table
# before and after, the answer's model_version, and the update events from the daemon log.
# Everything lives in a temporary directory, removed at the end (KEEP=1 keeps it).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=demo-update
source scripts/demo-common.sh

broker_port=$(free_port)
http_port=$(free_port)
broker="mqtt://127.0.0.1:$broker_port"
fleet=demo

step "packing fraud v2 (the demo model in 4 KiB chunks, signed with device/demo-keys/signing.key)"
pack_v2 4K

step "starting mosquitto on 127.0.0.1:$broker_port"
cat >"$work/mosquitto.conf" <<EOF
user $(id -un)
listener $broker_port 127.0.0.1
allow_anonymous true
persistence true
persistence_location $work/
log_dest file $work/mosquitto.log
EOF
"$MOSQUITTO" -c "$work/mosquitto.conf" 2>>"$work/mosquitto.log" &
pids+=($!)

step "starting the daemon (device demo-pi, empty store: it serves the factory bundle, v1)"
cat >"$work/config.toml" <<EOF
[device]
id = "demo-pi"
[store]
path = "$work/store"
factory = "device/factory"
[trust]
root = "device/demo-keys/root.json"
[server]
port = $http_port
[mqtt]
url = "$broker"
fleet = "$fleet"
EOF
"$EDGE" serve --config "$work/config.toml" 2>"$work/daemon.log" &
pids+=($!)

infer() {
    "$PY" - "$http_port" <<'EOF'
import json, sys, time, urllib.request
port = int(sys.argv[1])
body = json.dumps({"inputs": [{"name": "input_0", "datatype": "FP32", "shape": [1, 30], "data": [0.1] * 30}]}).encode()
for _ in range(600):
    try:
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/fraud/infer", body)
        answer = json.load(urllib.request.urlopen(req, timeout=5))
        print(f"model_version {answer['model_version']}, output_0 {answer['outputs'][0]['data'][0]:.4f}")
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("the daemon did not answer")
EOF
}

wait_for_version() {
    for _ in $(seq 1 300); do
        if infer | grep -q "model_version $1,"; then return 0; fi
        sleep 0.1
    done
    echo "demo-update: the daemon never served v$1; its log:" >&2
    cat "$work/daemon.log" >&2
    exit 1
}

wait_for_version 1
echo "POST /v2/models/fraud/infer -> $(infer)"
sleep 1
step "fleet status before the update"
"$EDGE" fleet status --fleet "$fleet" --broker "$broker"

step "publishing fraud v2 to fleet '$fleet'"
"$EDGE" fleet publish "$work/fraud-v2.bundle" --fleet "$fleet" --broker "$broker" \
    --sign-key device/demo-keys/signing.key --root device/demo-keys/root.json

wait_for_version 2
echo "POST /v2/models/fraud/infer -> $(infer)"
sleep 0.5
step "fleet status after the update"
"$EDGE" fleet status --fleet "$fleet" --broker "$broker"

step "what the daemon logged"
grep -E "update |serving|installed|activated" "$work/daemon.log" || true
