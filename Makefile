# Two entry points for a fresh clone: `make demo` runs the whole pipeline, `make test` runs the tests.
# Each sets up what it needs (virtual environment, npm packages, the local Kafka + Elasticsearch) and
# can be run again: every step below is skipped when its stamp file is newer than its inputs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STACK  := infra/local/stack

.PHONY: demo test unit stack stack-down chromium spark-jars failover image clean

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,spark]'
	@touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's Chromium drives the browser tests (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || { echo "make: cannot install chromium; run: sudo apt-get install -y chromium" >&2; exit 1; }; }

stack:
	@$(STACK) up

stack-down:
	@$(STACK) down

spark-jars: $(VENV)/.installed
	@$(STACK) spark-jars >/dev/null

demo: $(VENV)/.installed node_modules/.installed  # the demo starts the stack itself, so Ctrl-C can stop it too
	@infra/local/demo

test: $(VENV)/.installed node_modules/.installed chromium stack spark-jars
	$(VENV)/bin/pytest

# The container image (infra/image/build-local: dockerd, Debian bases, docker build) and its run test;
# `make test` runs this test too.
image:
	@infra/image/build-local

# Failover on a local three-broker, two-node cluster of its own (.stack-cluster, ports 29092.., 29200..):
# CPU heavy, so not part of `make test`. Stops the cluster afterwards when it started it.
failover: $(VENV)/.installed
	GEOIOT_FAILOVER=1 $(VENV)/bin/pytest -m failover -s

unit: $(VENV)/.installed
	$(VENV)/bin/pytest -m "not integration"

clean:
	rm -rf $(VENV) node_modules .pytest_cache test-output
