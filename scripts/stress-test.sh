#!/usr/bin/env bash
# scripts/stress-test.sh: does `make test` pass on this machine whatever its load?
#
# Clones the current repository's HEAD (what is committed, not the working tree) into a fresh
# temporary directory, as a new user would get it, installs its dependencies once, then runs
# `make test` BUSY_RUNS times with every core saturated by a CPU hog and IDLE_RUNS times with
# nothing else started, and prints a pass/fail table (docs/testing.md). Every run's full output
# is kept under the work directory, so a failure's cause is never lost.
#
#   scripts/stress-test.sh                    # 3 busy runs, then 1 idle run
#   BUSY_RUNS=3 IDLE_RUNS=3 scripts/stress-test.sh
#   HOGS=4 scripts/stress-test.sh             # hog processes (default: one per core)
#   KEEP=0 scripts/stress-test.sh             # remove the clone at the end (logs go with it)
#
# Exit status: 0 when every run passed, 1 otherwise, 2 when the set-up failed.
set -euo pipefail

BUSY_RUNS=${BUSY_RUNS:-3}
IDLE_RUNS=${IDLE_RUNS:-1}
HOGS=${HOGS:-$(nproc)}
KEEP=${KEEP:-1}
PYTHON=${PYTHON:-python3}

repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
work=$(mktemp -d "${TMPDIR:-/tmp}/edge-stress.XXXXXX")
clone="$work/edge-runtime"
logs="$work/logs"
mkdir -p "$logs"

hog_pids=()
stop_hogs() {
    # Only the processes this script started, by their ids.
    for pid in "${hog_pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${hog_pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    hog_pids=()
}
finish() {
    stop_hogs
    if [ "$KEEP" = "0" ]; then
        rm -rf "$work"
    fi
}
trap finish EXIT
trap 'exit 130' INT TERM

start_hogs() {
    for _ in $(seq "$HOGS"); do
        "$PYTHON" -c 'while 1: pass' &
        hog_pids+=("$!")
    done
}

echo "stress-test: cloning $repo ($(git -C "$repo" rev-parse --short HEAD)) into $clone"
git clone -q "$repo" "$clone"

# Dependencies once, outside the timed runs (a network or wheel-build failure is a set-up
# problem, not a test failure; its log is kept either way).
echo "stress-test: installing dependencies (log: $logs/deps.log)"
if ! make -C "$clone" deps >"$logs/deps.log" 2>&1; then
    echo "stress-test: 'make deps' failed; the end of $logs/deps.log:" >&2
    tail -n 30 "$logs/deps.log" >&2
    exit 2
fi

rows=()
failed=0
run=0
run_one() {  # run_one LOAD
    local load=$1 log status summary started seconds
    run=$((run + 1))
    log="$logs/run-$run-$load.log"
    if [ "$load" = "busy" ]; then
        start_hogs
    fi
    echo "stress-test: run $run ($load${hog_pids:+, ${#hog_pids[@]} hogs}), log: $log"
    started=$(date +%s)
    if make -C "$clone" test >"$log" 2>&1; then status=pass; else status=FAIL; failed=$((failed + 1)); fi
    seconds=$(( $(date +%s) - started ))
    stop_hogs
    # pytest's last summary line ("650 passed, 5 deselected in 512.3s"), else the last line.
    summary=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$log" | tail -n 1 | sed -E 's/^=+ //; s/ =+$//' || true)
    [ -n "$summary" ] || summary=$(tail -n 1 "$log")
    rows+=("| $run | $load | $status | $((seconds / 60)) min $((seconds % 60)) s | $summary |")
}

for _ in $(seq "$BUSY_RUNS"); do run_one busy; done
for _ in $(seq "$IDLE_RUNS"); do run_one idle; done

echo
echo "stress-test: $(git -C "$clone" rev-parse --short HEAD) on $(nproc) cores ($(uname -m)), $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "| run | load | result | wall time | pytest summary |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
echo
echo "stress-test: $((run - failed)) of $run runs passed; logs in $logs"
[ "$failed" -eq 0 ]
