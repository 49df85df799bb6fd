# edge-runtime: the two commands that matter come first.
#   make run    set up a device virtual environment from nothing, install the demo bundle
#               into a local store under the checkout, score the sample file offline, then
#               start the daemon on it (KServe v2 HTTP on 127.0.0.1:8000; Ctrl-C stops it)
#   make test   install everything the tests need (pip and Debian packages), run lint, types
#               and the whole suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
DEVICE_VENV := .venv-device
EDGE := $(DEVICE_VENV)/bin/edge-runtime
DEMO := --store .edge/store --root device/demo-keys/root.json --factory device/factory

.PHONY: run test deps system-deps lint unit test-long test-corpus test-arm stress-test bench factory demo-update demo-fleet bench-fleet clean

run: $(DEVICE_VENV)/.stamp
	$(EDGE) models install device/factory/fraud.bundle $(DEMO)
	$(EDGE) models list $(DEMO)
	$(EDGE) score --model fraud device/factory/sample.csv $(DEMO)
	$(EDGE) serve --config device/demo-config.toml

test: deps lint
	$(VENV)/bin/pytest

deps: system-deps $(VENV)/.stamp

system-deps:
	bash scripts/system-deps.sh

$(VENV)/.stamp: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[device,converter,dev,grpc]'
	touch $@

$(DEVICE_VENV)/.stamp: pyproject.toml
	test -x $(DEVICE_VENV)/bin/python || $(PYTHON) -m venv $(DEVICE_VENV)
	$(DEVICE_VENV)/bin/pip install -q --upgrade pip
	$(DEVICE_VENV)/bin/pip install -q -e '.[device]'
	touch $@

lint: $(VENV)/.stamp
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test-long: deps
	EDGE_TEST_LONG=1 $(VENV)/bin/pytest -m "not arm"

# Every model of the real-model corpus (tests/corpus), converted, installed and served; slow.
test-corpus: deps
	$(VENV)/bin/pytest tests/corpus -m "corpus or not corpus"

test-arm: deps
	$(VENV)/bin/pytest -m arm

# make test from a fresh clone, 3 times with every core busy and once idle; a pass/fail table
# (docs/testing.md). Takes well over half an hour on 2 cores.
stress-test:
	bash scripts/stress-test.sh

bench: deps
	@for b in bench/*.py; do echo "== $$b"; $(VENV)/bin/python $$b || exit 1; done

# 200 simulated devices through one mosquitto (docs/scaling.md); writes bench/results/fleet.md
bench-fleet: deps
	$(VENV)/bin/python bench/fleet_sim.py

# A second version of the demo model delivered over a local mosquitto to a running daemon.
demo-update: deps
	bash scripts/demo-update.sh

# The fleet console (docs/console.md) on a simulated fleet of 12 devices and a local mosquitto; a
# staged rollout of fraud v2 (one device fails it) runs while the page is open. Ctrl-C stops.
demo-fleet: deps
	bash scripts/demo-fleet.sh

# Rebuild the demo model and the factory bundle (converted by edge-convert, signed with the demo key).
factory: $(VENV)/.stamp
	$(VENV)/bin/python device/factory/build_demo.py
	mkdir -p .edge
	$(VENV)/bin/edge-convert device/factory/fraud.onnx --name fraud --version 1 --quantize fp32 \
	    --validation device/factory/holdout.npz --profile-data device/factory/calibration.npy \
	    --sign-key device/demo-keys/signing.key \
	    --log .edge/fraud.onnx2tf.log -o device/factory/fraud.bundle

clean:
	rm -rf .edge .pytest_cache .mypy_cache .ruff_cache .grimp_cache .import_linter_cache
