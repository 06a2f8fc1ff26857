# Every target here is what CI and a person run; .ci/run calls `make test` and nothing else.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := orthanc orthanc-dicomweb dcm2niix dcmtk dicom3tools redis-server chromium chromium-driver prometheus postgresql
# The torch every test runs on; the Docker image installs this version too, as a CUDA build
# (services/inference/Dockerfile's TORCH_VERSION; tests/unit/test_image_pins.py keeps the two equal).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.setup-stamp

.PHONY: setup system-packages test test-unit lint format demo bench gpu-bench accuracy-clinical train-demo vendor-niivue vendor-swagger clean pin-masks

setup: system-packages $(STAMP)

# Idempotent: installs the OS packages only when one is missing and apt-get is there.
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null; then echo "missing OS packages:$$missing (no apt-get here: install them by hand)"; exit 0; fi; \
	SUDO=""; [ "$$(id -u)" = 0 ] || SUDO="sudo"; \
	echo "installing OS packages:$$missing"; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing

# The service package and, as plugins of its CLI, the training package (tumorseg train/evaluate) and the
# development kit (tumorseg phantom/phantom-followup/to-dicom; local servers and launchers for tests).
$(STAMP): pyproject.toml training/pyproject.toml devkit/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q "$(TORCH_SPEC)" -e ".[test,nnunet]" -e ./training -e ./devkit
	touch $(STAMP)

test: setup
	$(BIN)/pytest

# The fast loop: tests/unit alone (pure logic, small arrays, tiny networks). `make test` adds tests/integration
# (real engines, served processes, phantoms, whole networks) and training/tests (pyproject's testpaths).
test-unit: setup
	$(BIN)/pytest tests/unit

# ruff, mypy, and the layering contracts of pyproject.toml ([tool.importlinter]; tests/unit/test_layering.py
# runs them inside `make test` too).
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

demo: setup
	$(BIN)/python scripts/demo.py

# Trains the shipped model on phantoms (~55 min on 2 CPU cores, ~7 min on one H100; the same script).
train-demo: setup
	bash scripts/train_demo.sh

bench: setup
	PYTHONPATH=. $(BIN)/python scripts/bench.py  # PYTHONPATH: its backends part writes test-format models (tests/)

# Issue 43's device path on a GPU machine (minutes): registration on the CPU, deepbet on the CPU and on CUDA,
# preprocessing, inference on the CPU and on CUDA with AMP and without (mask voxels and Dice AMP changes).
# Without a GPU it runs the CPU stages and says what it skipped. Writes out/gpu_bench.json.
gpu-bench: setup
	$(BIN)/python scripts/gpu_bench.py

# Issue 15's acceptance: Dice and brain containment on clinical-head phantoms through POST /segment
# (ACC_SEEDS picks seeds, default 50-57; ~1 min a seed on 2 CPU cores). Writes out/accuracy/clinical.json.
# ACC_MOTION: each series' motion from rest, DEG,MM (default 5,5); several ranges separated by ';' (issue
# 45: ACC_MOTION='5,5;7.5,15') measure each seed at each, with each request's registration error and the
# paired Dice differences against the first range. ACC_TWIN=0 skips the skull-stripped twins.
accuracy-clinical: setup
	$(BIN)/python scripts/clinical_accuracy.py

# The viewer page's NiiVue, vendored from the npm registry (needs node/npm; nothing is fetched at run time).
NIIVUE_VERSION ?= 0.69.0
vendor-niivue:
	NIIVUE_VERSION=$(NIIVUE_VERSION) bash scripts/vendor_niivue.sh

# Swagger UI for /docs, vendored the same way (FastAPI's own page loads it from a CDN: blank offline).
SWAGGER_UI_VERSION ?= 5.36.0
vendor-swagger:
	SWAGGER_UI_VERSION=$(SWAGGER_UI_VERSION) bash scripts/vendor_swagger.sh

clean:
	rm -rf $(VENV) out results .pytest_cache .mypy_cache .ruff_cache

# The bench studies' masks voxel for voxel (scripts/pin_masks.py): run before a refactor, then again with
# PIN_CHECK=out/pins.json PIN_OUT=out/after.json; fails on any changed voxel.
pin-masks: setup
	$(BIN)/python scripts/pin_masks.py
