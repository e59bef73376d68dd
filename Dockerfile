# One image for every component: each Marathon app (or docker run / Kubernetes pod) runs it with a
# different command, configured only through the environment variables of geoiot/config.py.
#
#   docker build -t geoiot/geoiot:0.1.0 .                          # sources, agents, web, topics
#   docker build --target spark -t geoiot/geoiot-spark:0.1.0 .     # + JRE and Spark for the Spark job
#   infra/image/build-local                                        # no registry: bases from Debian packages
#
# The project is a normal (non-editable) install in /opt/venv: its wheel carries the map (static/) and the
# vendored Leaflet files (setup.py bundles them into web/bundled/ at build time). The file works with
# BuildKit and with the legacy builder (no heredocs, no syntax directive: nothing to pull but the bases).
# The legacy builder builds every stage before its target, so the Spark-only stages come after runtime.

# Base images: the public defaults, or any Debian bookworm image with python3 3.11 at the same path in
# PYTHON_BUILD_IMAGE and PYTHON_IMAGE (the venv links to it); infra/image/build-local passes its own.
ARG PYTHON_BUILD_IMAGE=python:3.11-bookworm
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG NODE_IMAGE=node:20-bookworm-slim
ARG MAVEN_IMAGE=maven:3.9-eclipse-temurin-17
# Spark 3.5 is the last Spark line with a Mesos scheduler (removed in Spark 4.0); the driver and the
# executors of the Spark app use it to run against the Mesos master as the original demo did. The stateful
# job is tested on this line with these pandas/pyarrow/numpy bounds (README, "Spark").
ARG SPARK_MESOS_VERSION=3.5.7
# What the job needs beside pyspark on that line; `make test` builds its 3.5 venv from these two ARGs too.
ARG SPARK_MESOS_PINS="pandas>=2.2,<2.3 pyarrow>=15,<20 numpy<2.3"

# ---------------------------------------------------------------- the map's third-party assets
FROM ${NODE_IMAGE} AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error

# ---------------------------------------------------------------- Python build (compilers live here only)
FROM ${PYTHON_BUILD_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md package.json package-lock.json ./
COPY geoiot ./geoiot
COPY agents ./agents
COPY replay ./replay
COPY web ./web
COPY ingest ./ingest
COPY static ./static
# Only the folders the server serves (web.assets.VENDOR); setup.py bundles them into the wheel.
COPY --from=assets /src/node_modules/leaflet ./node_modules/leaflet
COPY --from=assets /src/node_modules/leaflet.heat ./node_modules/leaflet.heat
COPY --from=assets /src/node_modules/@geoman-io/leaflet-geoman-free ./node_modules/@geoman-io/leaflet-geoman-free
RUN pip install . \
 && cd / && python -c "import geoiot.config, agents, replay, ingest.cli, web.app as a; assert (a.STATIC_DIR / 'index.html').is_file(), a.STATIC_DIR"

# ---------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/geoiot geoiot
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KAFKA_BOOTSTRAP=broker.kafka.l4lb.thisdcos.directory:9092 \
    ES_URL=http://elasticsearch.marathon.l4lb.thisdcos.directory:9200 \
    WEB_HOST=0.0.0.0
# Writable working directory for Faust's state (<IOT_APP_ID>-data) and generated data files.
WORKDIR /home/geoiot
USER 10001:10001
EXPOSE 8080 6066 8090
# tini reaps children and forwards SIGTERM; any command (python -m web, python -m ingest, faust ...) follows it.
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "web"]

# ---------------------------------------------------------------- the Kafka connector jars for Spark
FROM ${MAVEN_IMAGE} AS sparkjars
ARG SPARK_MESOS_VERSION
WORKDIR /pom
RUN printf '%s\n' '<project xmlns="http://maven.apache.org/POM/4.0.0">' \
      '  <modelVersion>4.0.0</modelVersion>' \
      '  <groupId>geoiot</groupId><artifactId>spark-jars</artifactId><version>1</version>' \
      '  <dependencies>' \
      "    <dependency><groupId>org.apache.spark</groupId><artifactId>spark-sql-kafka-0-10_2.12</artifactId><version>${SPARK_MESOS_VERSION}</version></dependency>" \
      '  </dependencies>' \
      '</project>' >pom.xml
# pyspark ships Spark itself, Scala, Hadoop client, lz4, snappy, slf4j: copy only what it lacks.
RUN mvn -q dependency:copy-dependencies -DoutputDirectory=/jars \
      -DincludeArtifactIds=spark-sql-kafka-0-10_2.12,spark-token-provider-kafka-0-10_2.12,kafka-clients,commons-pool2

# ---------------------------------------------------------------- runtime + Spark (docker build --target spark)
FROM runtime AS spark
ARG SPARK_MESOS_VERSION
ARG SPARK_MESOS_PINS
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-jre-headless procps \
 && rm -rf /var/lib/apt/lists/* \
 && /opt/venv/bin/pip install --no-cache-dir "pyspark==${SPARK_MESOS_VERSION}" ${SPARK_MESOS_PINS}
COPY --from=sparkjars /jars/ /opt/venv/lib/python3.11/site-packages/pyspark/jars/
# spark-submit takes the job as a file; the installed package is its import path.
COPY agents/spark/job.py /app/agents/spark/job.py
ENV JAVA_HOME=/usr/lib/jvm/default-java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python
USER 10001:10001
CMD ["spark-submit", "--version"]

# ---------------------------------------------------------------- the default target is the slim runtime
FROM runtime
