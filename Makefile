# Two entry points on a fresh machine (README.md): `make demo` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
export OMNITRAIN_CACHE ?= $(HOME)/.cache/omnitrain

.PHONY: setup promtool cluster-bins demo test test-fast crd clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[trainer,report,test]"
	@touch $@

# promtool (Debian's prometheus package) checks the alert rules in the tests.
promtool:
	@command -v promtool >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null)

setup: $(STAMP) promtool

cluster-bins:
	bash hack/build-cluster-bins.sh

demo: setup cluster-bins
	$(BIN)/python hack/demo.py

test: setup cluster-bins
	$(BIN)/python -m pytest -q -ra tests

# Unit tests only: no control plane.
test-fast: setup
	$(BIN)/python -m pytest -q -ra -m "not e2e" tests

crd: setup
	$(BIN)/omnitrain crd > manifests/crd/omnitrainingjobs.yaml

clean:
	-$(BIN)/omnitrain dev down
	rm -rf .dev
