# AdaPool Serve. `make run` and `make test` set up .venv themselves (idempotent: a stamp file per
# set of extras, redone only when pyproject.toml or constraints.txt change).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt

.DEFAULT_GOAL := help
.PHONY: help setup setup-serve run test lint format lock clean reproduce signature digits models verify bench \
	hostile bench-storm bench-probe bench-memory bench-instances attention compare wheelhouse image base-image

PRESET ?= cpu

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The Python client (client/, its own package) goes into every environment, so that the
# README's client examples run from .venv after `make run`.
CLIENT := $(PIP) install --quiet -c $(CONSTRAINTS) -e ./client

$(VENV)/.serve.stamp: pyproject.toml client/pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve]'
	$(CLIENT)
	@touch $@

$(VENV)/.dev.stamp: pyproject.toml client/pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve,train,dev]'
	$(CLIENT)
	@touch $@ $(VENV)/.serve.stamp

setup-serve: $(VENV)/.serve.stamp  ## install the serving environment (no torch)

setup: $(VENV)/.dev.stamp  ## install everything: serving, training/export, tests and linters

run: setup-serve  ## serve the committed models on localhost:8000 (settings: ADAPOOL_* or ARGS="--port 9000")
	$(BIN)/python -m service $(ARGS)

test: setup  ## run every test
	$(BIN)/pytest

reproduce: setup  ## the kNN-Centroid sweep: make reproduce PRESET=cpu (configs/sweep/<PRESET>.toml)
	$(BIN)/python -m models.sweep --preset configs/sweep/$(PRESET).toml

signature: setup  ## the Signature study: which pooling finds the signal, which rule reads it off the weights
	$(BIN)/python -m models.signature_study --preset configs/signature/cpu.toml

digits: setup  ## the digits-bags study: pooling methods and their weights on real data (scikit-learn's digits)
	$(BIN)/python -m models.digits_study --preset configs/digits/cpu.toml $(ARGS)

models: setup  ## train (or reuse the sweep's runs) and export the default models into model_repository/
	$(BIN)/python -m export.defaults

bench: setup  ## the server under load beside raw ONNX Runtime (needs hey: apt-get install hey)
	$(BIN)/python -m bench.serve $(ARGS)

hostile: setup  ## hostile clients (huge header, 20,000 silent connections, slowloris) and the limits' cost (needs hey)
	$(BIN)/python -m bench.hostile $(ARGS)

bench-storm: setup  ## a 429 storm (hey, 64 in flight, queue 8) with admission at the request head and without (needs hey)
	$(BIN)/python -m bench.storm --out results/bench/storm.json $(ARGS)

bench-probe: setup  ## how often the start-up batch policy's choice changes: 20 probes per model, both rules
	$(BIN)/python -m bench.probe --out results/bench/probe.json $(ARGS)

bench-memory: setup  ## RSS and ms per model run against tokens and batch, the probe, arena options (ARGS="--baseline DIR")
	$(BIN)/python -m bench.memory $(ARGS)

bench-instances: setup  ## peak RSS with model_instances 1 and 2: two of the largest runs at once
	$(BIN)/python -m bench.instances --out results/bench/instances.json $(ARGS)

attention: setup  ## encoder attention candidates side by side (explicit, Attention, MHA, chunked)
	$(BIN)/python -m bench.attention $(ARGS)

$(VENV)/.bench.stamp: pyproject.toml client/pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve,train,dev,bench]'
	$(CLIENT)
	@touch $@ $(VENV)/.dev.stamp $(VENV)/.serve.stamp

compare: $(VENV)/.bench.stamp  ## our server against naive FastAPI, LitServe and Triton, with a py-spy profile (needs hey)
	$(BIN)/python -m bench.compare $(ARGS)

verify: setup  ## check every model in model_repository/ (integrity, signature, ONNX Runtime vs PyTorch)
	$(BIN)/python -m export.verify model_repository

lint: setup  ## ruff check, ruff format --check, mypy --strict (the client included)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy modelrepo models export service bench client/src/adapool_client

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: setup  ## rewrite constraints.txt from the current .venv
	{ sed -n '/^#/p;/^onnxruntime-gpu==/p' $(CONSTRAINTS); \
	  $(PIP) freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:  ## remove .venv, caches and the downloaded wheels
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
	rm -f $(WHEELHOUSE)/*.whl $(WHEELHOUSE)/SHA256SUMS

# The CPU image, built with no network inside the build (README.md, "Build the image offline").
# ENGINE: podman or Docker, whichever is installed (podman first), with any global flags
# (ENGINE="podman --runtime runc"); IMAGE_BUILD_FLAGS: more build flags (--ulimit ...);
# PYTHON_IMAGE: the base image (the Dockerfile's default, python:3.11-slim-bookworm, if empty).
ENGINE ?= $(firstword $(foreach e,podman docker,$(if $(shell command -v $(e) 2>/dev/null),$(e))))
IMAGE ?= adapool-serve:cpu
PYTHON_IMAGE ?=
IMAGE_BUILD_FLAGS ?=
BASE_IMAGE ?= localhost/debian-python:bookworm
WHEELHOUSE := docker/wheelhouse
# The wheels are for the image, not for this host: CPython 3.11 on Linux with glibc <= 2.36
# (Debian 12, the base of python:3.11-slim-bookworm), on IMAGE_ARCH.
IMAGE_ARCH ?= x86_64
IMAGE_GLIBC_MINOR ?= 36
WHEEL_PLATFORMS := manylinux1 manylinux2010 manylinux2014 \
	$(foreach m,$(shell seq 5 $(IMAGE_GLIBC_MINOR)),manylinux_2_$(m))
PIP_VERSION = $(shell sed -n 's/^ARG PIP_VERSION=//p' docker/Dockerfile)
BUILD_REQUIRES = $(shell sed -n 's/^requires = \[\(.*\)\]$$/\1/p' pyproject.toml | tr ',' ' ')

$(WHEELHOUSE)/SHA256SUMS: pyproject.toml $(CONSTRAINTS) docker/Dockerfile | $(BIN)/python
	rm -f $(WHEELHOUSE)/*.whl $@
	$(PIP) download --quiet --dest $(WHEELHOUSE) --only-binary=:all: \
	    --implementation cp --python-version 3.11 --abi cp311 \
	    $(foreach p,$(WHEEL_PLATFORMS),--platform $(p)_$(IMAGE_ARCH)) \
	    -c $(CONSTRAINTS) '.[serve]' 'pip==$(PIP_VERSION)' $(BUILD_REQUIRES)
	cd $(WHEELHOUSE) && sha256sum *.whl > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS

wheelhouse: $(WHEELHOUSE)/SHA256SUMS  ## download the image's wheels into docker/wheelhouse/ (needs PyPI)

image: $(WHEELHOUSE)/SHA256SUMS  ## build the CPU image (IMAGE=adapool-serve:cpu) with no network inside the build
	@test -n "$(ENGINE)" || { echo "make image: neither podman nor docker is installed" >&2; exit 1; }
	$(ENGINE) build --network none $(if $(findstring podman,$(ENGINE)),--format docker) \
	    $(IMAGE_BUILD_FLAGS) --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheelhouse \
	    $(if $(PYTHON_IMAGE),--build-arg PYTHON_IMAGE=$(PYTHON_IMAGE)) \
	    -f docker/Dockerfile -t $(IMAGE) .

base-image:  ## make BASE_IMAGE (Debian 12 + Python 3.11) from Debian's packages: mmdebstrap, as root
	@test -n "$(ENGINE)" || { echo "make base-image: neither podman nor docker is installed" >&2; exit 1; }
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT \
	    && mmdebstrap --quiet --variant=minbase --include=python3,python3-venv,python-is-python3 \
	        $(foreach d,man locale doc info,--dpkgopt='path-exclude=/usr/share/$(d)/*') \
	        --dpkgopt='path-include=/usr/share/doc/*/copyright' bookworm "$$tmp/base.tar" \
	    && $(ENGINE) import --change 'CMD ["python3"]' "$$tmp/base.tar" $(BASE_IMAGE)
