# Airlock on the official Airflow image: its package and DAGs, its Python dependencies, and the tools its
# tasks call (the same Debian packages as the Makefile's TOOL_PKGS; tests/test_compose.py checks it).
FROM apache/airflow:3.3.2

USER root
RUN apt-get update \
 && apt-get install -y --no-install-recommends mariadb-client mydumper postgresql-client-15 zstd \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*

USER airflow
COPY --chown=airflow:root requirements.txt pyproject.toml README.md /opt/airlock/
COPY --chown=airflow:root include /opt/airlock/include
COPY --chown=airflow:root dags /opt/airlock/dags
COPY --chown=airflow:root plugins /opt/airlock/plugins
# The runtime part of requirements.txt (providers and Airlock's own dependencies; not the test tools),
# with Airflow held at the image's version.
RUN grep -E '^(apache-airflow-providers-|celery|redis|asyncpg|helm-python-sdk|psycopg2|PyYAML|packaging)' \
      /opt/airlock/requirements.txt > /tmp/runtime.txt \
 && pip install --no-cache-dir "apache-airflow==3.3.2" -r /tmp/runtime.txt \
 && pip install --no-cache-dir --no-deps -e /opt/airlock

ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/airlock/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/airlock/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False
