# Two entry points on a fresh machine (README.md): `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export OMNITRAIN_CACHE ?= $(HOME)/.cache/omnitrain

.PHONY: setup promtool cluster-bins demo lint format test test-fast crd clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[trainer,report,test,lint]"
	@touch $@

# promtool (Debian's prometheus package) checks the alert rules in the tests.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

setup: $(STAMP) promtool

cluster-bins:
	bash hack/build-cluster-bins.sh
	bash hack/build-kueue.sh

demo: setup cluster-bins
	$(BIN)/python hack/demo.py

# Static checks (configuration in pyproject.toml): lint, formatting, types at the typed boundaries, and the import
# layers of docs/contracts.md. Part of `make test`.
lint: setup
	$(BIN)/ruff check omnitrain tests bench hack
	$(BIN)/ruff format --check omnitrain tests bench hack
	$(BIN)/mypy
	$(BIN)/lint-imports

format: setup
	$(BIN)/ruff check --fix omnitrain tests bench hack
	$(BIN)/ruff format omnitrain tests bench hack

test: lint cluster-bins
	$(BIN)/python -m pytest -q -ra tests

# Unit tests only: no control plane.
test-fast: lint
	$(BIN)/python -m pytest -q -ra -m "not e2e" tests

crd: setup
	$(BIN)/omnitrain crd > manifests/crd/omnitrainingjobs.yaml

clean:
	-$(BIN)/omnitrain dev down
	rm -rf .dev
