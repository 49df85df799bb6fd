#!/usr/bin/env bash
# make demo-fleet: the fleet console (docs/console.md) on a simulated fleet, on this machine.
#
# Starts a private mosquitto, 12 simulated devices (the real update client, factory bundle v1,
# demo trust root; sim-0007 mis-computes v2 and fails its self-test) and the console on
# http://127.0.0.1:${PORT:-8080}/, then runs a staged rollout of fraud v2 (--steps 10,50,100,
# --max-failures 20) while you watch the page. Ctrl-C stops everything. Everything lives in a
# temporary directory, removed at the end (KEEP=1 keeps it, with the console's SQLite record).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO=demo-fleet
PORT=${PORT:-8080}
source scripts/demo-common.sh

broker_port=$(free_port)
broker="mqtt://127.0.0.1:$broker_port"
fleet=demo

step "packing fraud v2 (the demo model, signed with device/demo-keys/signing.key)"
pack_v2 16K

step "starting mosquitto on 127.0.0.1:$broker_port"
printf 'user %s\nlistener %s 127.0.0.1\nallow_anonymous true\n' "$(id -un)" "$broker_port" >"$work/mosquitto.conf"
"$MOSQUITTO" -c "$work/mosquitto.conf" 2>"$work/mosquitto.log" &
pids+=($!)

step "starting 12 simulated devices (sim-0007 fails the self-test of v2)"
"$PY" - "$broker" "$fleet" "$work" <<'PYEOF' &
import signal, sys, threading
from pathlib import Path
from edge_runtime.fleet.simulate import Fault, SimSettings, SimulatedFleet, device_ids
url, fleet, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
ids = device_ids(12)
settings = SimSettings(url=url, fleet=fleet, root_file=Path("device/demo-keys/root.json"), work_dir=work / "devices",
                       factory_dir=Path("device/factory"), faults=(Fault("fraud", frozenset({2}), frozenset({"sim-0007"})),))
done = threading.Event()
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *_: done.set())
with SimulatedFleet(settings, ids):  # in this process: spawned workers cannot re-import a script read from stdin
    (work / "devices.ready").touch()
    done.wait()
PYEOF
pids+=($!)

step "starting the console on http://127.0.0.1:$PORT/ (record $work/console.sqlite)"
"$EDGE" fleet console --fleet "$fleet" --broker "$broker" --db "$work/console.sqlite" --port "$PORT" \
    --max-failures 20 --root device/demo-keys/root.json &
pids+=($!)
for _ in $(seq 1 600); do [ -e "$work/devices.ready" ] && break; sleep 0.1; done
[ -e "$work/devices.ready" ] || { echo "demo-fleet: the simulated devices did not start" >&2; exit 1; }
sleep 2
echo "open http://127.0.0.1:$PORT/ in a browser"

step "staged rollout of fraud v2: 10%, 50%, 100%, 20 s per step, halting above 20% failures"
"$EDGE" fleet publish "$work/fraud-v2.bundle" --fleet "$fleet" --broker "$broker" \
    --sign-key device/demo-keys/signing.key --root device/demo-keys/root.json \
    --steps 10,50,100 --step-wait 20 --max-failures 20 || true

step "the console keeps running on http://127.0.0.1:$PORT/ ; Ctrl-C stops the demo"
wait "${pids[@]}"
