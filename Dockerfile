# syntax=docker/dockerfile:1.7
# One image for every component: each Marathon app (or docker run / Kubernetes pod) runs it with a
# different command, configured only through the environment variables of geoiot/config.py.
#
#   docker build -t geoiot/geoiot:0.1.0 .                          # sources, agents, web, topics
#   docker build --target spark -t geoiot/geoiot-spark:0.1.0 .     # + JRE and Spark for the Spark job
#
# The project is installed in editable mode at /app, because the web server finds the map (static/) and
# its vendored Leaflet files (node_modules/) next to its package, as in a checkout.

ARG PYTHON_VERSION=3.11
ARG NODE_VERSION=20
# Spark 3.5 is the last Spark line with a Mesos scheduler (removed in Spark 4.0); the driver and the
# executors of the Spark app use it to run against the Mesos master as the original demo did.
ARG SPARK_MESOS_VERSION=3.5.7

# ---------------------------------------------------------------- the map's third-party assets
FROM node:${NODE_VERSION}-bookworm-slim AS assets
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund --loglevel=error

# ---------------------------------------------------------------- Python build (compilers live here only)
FROM python:${PYTHON_VERSION}-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md ./
COPY geoiot ./geoiot
COPY agents ./agents
COPY replay ./replay
COPY web ./web
RUN pip install -e . && python -c "import geoiot.config, agents, replay, web"

# ---------------------------------------------------------------- the Kafka connector jars for Spark
FROM maven:3.9-eclipse-temurin-17 AS sparkjars
ARG SPARK_MESOS_VERSION
WORKDIR /pom
RUN cat > pom.xml <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>geoiot</groupId><artifactId>spark-jars</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.spark</groupId><artifactId>spark-sql-kafka-0-10_2.12</artifactId><version>${SPARK_MESOS_VERSION}</version></dependency>
  </dependencies>
</project>
POM
# pyspark ships Spark itself, Scala, Hadoop client, lz4, snappy, slf4j: copy only what it lacks.
RUN mvn -q dependency:copy-dependencies -DoutputDirectory=/jars \
      -DincludeArtifactIds=spark-sql-kafka-0-10_2.12,spark-token-provider-kafka-0-10_2.12,kafka-clients,commons-pool2

# ---------------------------------------------------------------- runtime
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --create-home --home-dir /home/geoiot geoiot
COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app
COPY static /app/static
# Only the files the server serves (web.app.VENDOR): leaflet/dist and leaflet.heat/dist.
COPY --from=assets /src/node_modules/leaflet/dist /app/node_modules/leaflet/dist
COPY --from=assets /src/node_modules/leaflet.heat/dist /app/node_modules/leaflet.heat/dist
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    KAFKA_BOOTSTRAP=broker.kafka.l4lb.thisdcos.directory:9092 \
    ES_URL=http://elasticsearch.marathon.l4lb.thisdcos.directory:9200 \
    WEB_HOST=0.0.0.0
# Writable working directory for Faust's state (<IOT_APP_ID>-data) and generated data files.
WORKDIR /home/geoiot
USER 10001:10001
EXPOSE 8080 6066
# tini reaps children and forwards SIGTERM; any command (python -m ..., faust ...) follows it.
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "web"]

# ---------------------------------------------------------------- runtime + Spark (docker build --target spark)
FROM runtime AS spark
ARG SPARK_MESOS_VERSION
USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-jre-headless procps \
 && rm -rf /var/lib/apt/lists/* \
 && /opt/venv/bin/pip install --no-cache-dir "pyspark==${SPARK_MESOS_VERSION}" "pandas>=2.2" "pyarrow>=15"
COPY --from=sparkjars /jars/ /opt/venv/lib/python3.11/site-packages/pyspark/jars/
ENV JAVA_HOME=/usr/lib/jvm/default-java \
    SPARK_HOME=/opt/venv/lib/python3.11/site-packages/pyspark \
    PYSPARK_PYTHON=/opt/venv/bin/python \
    PYSPARK_DRIVER_PYTHON=/opt/venv/bin/python
USER 10001:10001
CMD ["spark-submit", "--version"]

# ---------------------------------------------------------------- the default target is the slim runtime
FROM runtime
