# Two entry points for a fresh clone: `make demo` runs the whole pipeline, `make test` runs the tests.
# Each sets up what it needs (virtual environment, npm packages, the local Kafka + Elasticsearch) and
# can be run again: every step below is skipped when its stamp file is newer than its inputs.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STACK  := infra/local/stack
# The Spark line of the DC/OS image (3.5.x, the last with Mesos) gets a venv of its own, so `make test`
# runs the Spark job's tests on it too; version and pins are read from the Dockerfile (their one home).
SPARK35      := .venv-spark35
SPARK35_VERSION := $(shell sed -n 's/^ARG SPARK_MESOS_VERSION=//p' Dockerfile)
SPARK35_PINS := $(shell sed -n 's/^ARG SPARK_MESOS_PINS=//p' Dockerfile | tr -d '"')

.PHONY: demo test unit stack stack-down chromium gdal qgis mosquitto spark-jars spark35 failover image clean bench-tools

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,spark]'
	@touch $@

$(SPARK35)/.installed: pyproject.toml Dockerfile
	@test -x $(SPARK35)/bin/python || $(PYTHON) -m venv $(SPARK35)
	$(SPARK35)/bin/python -m pip install --quiet --upgrade pip
	$(SPARK35)/bin/python -m pip install --quiet -e . 'pyspark==$(SPARK35_VERSION)' $(foreach p,$(SPARK35_PINS),'$(p)')
	@touch $@

spark35: $(SPARK35)/.installed
	@SPARK_VERSION=$(SPARK35_VERSION) $(STACK) spark-jars >/dev/null

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Debian's Chromium drives the browser tests (never a downloaded browser).
chromium:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || { echo "make: cannot install chromium; run: sudo apt-get install -y chromium" >&2; exit 1; }; }

# Debian's GDAL (ogrinfo, ogr2ogr with the OAPIF driver) is a client of the OGC API tests (tests/integration/test_ogc_clients.py).
gdal:
	@command -v ogr2ogr >/dev/null || { echo "installing Debian's gdal-bin for the OGC API client tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gdal-bin >/dev/null) \
	  || { echo "make: cannot install gdal-bin; run: sudo apt-get install -y gdal-bin" >&2; exit 1; }; }

# Debian's QGIS (python3-qgis, headless) loads an OGC API layer in tests/integration/test_ogc_clients.py.
qgis:
	@/usr/bin/python3 -c "import qgis.core" 2>/dev/null || { echo "installing Debian's python3-qgis for the OGC API client tests"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-qgis qgis-providers >/dev/null) \
	  || { echo "make: cannot install python3-qgis; run: sudo apt-get install -y python3-qgis qgis-providers" >&2; exit 1; }; }

# Debian's Mosquitto is the ingest gateway's MQTT broker (infra/local/stack runs it); its clients
# (mosquitto_pub, mosquitto_sub) and curl drive the gateway's tests.
mosquitto:
	@{ test -x /usr/sbin/mosquitto && command -v mosquitto_pub >/dev/null && command -v curl >/dev/null; } || { \
	  echo "installing Debian's mosquitto, mosquitto-clients and curl for the ingest gateway"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients curl >/dev/null) \
	  || { echo "make: cannot install mosquitto; run: sudo apt-get install -y mosquitto mosquitto-clients curl" >&2; exit 1; }; }

stack: mosquitto
	@$(STACK) up

stack-down:
	@$(STACK) down

spark-jars: $(VENV)/.installed
	@$(STACK) spark-jars >/dev/null

demo: $(VENV)/.installed node_modules/.installed mosquitto  # the demo starts the stack itself, so Ctrl-C can stop it too
	@infra/local/demo

# The map's pure modules (static/lib/) have Node's own test runner (Node >= 20; no npm package needed).
JSTEST := node --test tests/js/

test: $(VENV)/.installed node_modules/.installed chromium gdal qgis mosquitto stack spark-jars spark35
	$(JSTEST)
	$(VENV)/bin/pytest
	@echo "make: the Spark job's tests again on Spark $(SPARK35_VERSION) (the DC/OS image's line)"
	SPARK_PYTHON=$(CURDIR)/$(SPARK35)/bin/python $(VENV)/bin/pytest tests/integration/test_spark_job.py

# The container image (infra/image/build-local: dockerd, Debian bases, docker build) and its run test;
# `make test` runs this test too.
image:
	@infra/image/build-local

# Failover on a local three-broker, two-node cluster of its own (.stack-cluster, ports 29092.., 29200..):
# CPU heavy, so not part of `make test`. Stops the cluster afterwards when it started it.
failover: $(VENV)/.installed
	GEOIOT_FAILOVER=1 $(VENV)/bin/pytest -m failover -s

# Tests by tier (tests/unit: no service; tests/integration: Kafka, Elasticsearch, Spark; tests/e2e: browser
# and end to end). `make test` runs all three.
unit: $(VENV)/.installed
	$(JSTEST)
	$(VENV)/bin/pytest tests/unit -m "not integration"

# Load generators of the benchmarks (bench/ingest_gateway.py): Debian's hey, and vegeta (Go, pinned) for
# open-loop requests at a constant rate, built into .tools/bin with the machine's Go.
VEGETA_VERSION := v12.13.0
bench-tools:
	@command -v hey >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq hey >/dev/null)
	@test -x .tools/bin/vegeta || GOBIN=$(CURDIR)/.tools/bin go install github.com/tsenart/vegeta/v12@$(VEGETA_VERSION)

clean:
	rm -rf $(VENV) $(SPARK35) node_modules .pytest_cache test-output .tools
