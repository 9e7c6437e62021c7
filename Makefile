# AdaPool Serve. `make run` and `make test` set up .venv themselves (idempotent: a stamp file per
# set of extras, redone only when pyproject.toml or constraints.txt change).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
CONSTRAINTS := constraints.txt

.DEFAULT_GOAL := help
.PHONY: help setup setup-serve run test lint format lock clean reproduce signature digits models verify bench compare

PRESET ?= cpu

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 14

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.serve.stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve]'
	@touch $@

$(VENV)/.dev.stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve,train,dev]'
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

$(VENV)/.bench.stamp: pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(PIP) install --quiet -c $(CONSTRAINTS) -e '.[serve,train,dev,bench]'
	@touch $@ $(VENV)/.dev.stamp $(VENV)/.serve.stamp

compare: $(VENV)/.bench.stamp  ## our server against naive FastAPI, LitServe and Triton, with a py-spy profile (needs hey)
	$(BIN)/python -m bench.compare $(ARGS)

verify: setup  ## check every model in model_repository/ (integrity, signature, ONNX Runtime vs PyTorch)
	$(BIN)/python -m export.verify model_repository

lint: setup  ## ruff check, ruff format --check, mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy modelrepo models export service bench

format: setup  ## apply ruff's fixes and formatting
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

lock: setup  ## rewrite constraints.txt from the current .venv
	{ sed -n '/^#/p;/^onnxruntime-gpu==/p' $(CONSTRAINTS); \
	  $(PIP) freeze --exclude-editable | sed -E 's/^(torch==[0-9.]+)\+cpu$$/\1/'; } > $(CONSTRAINTS).new
	mv $(CONSTRAINTS).new $(CONSTRAINTS)

clean:  ## remove .venv and caches
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
