# cosmos-async on Astro Runtime (Airflow 3.3): the image of the local Astro stack and of a deployment.
# Build context: the repository root (this file needs pyproject.toml, cosmos_async/, triggers/ and dev/).
#   docker build -t cosmos-async:dev .
#   cd dev && astro dev start --image-name cosmos-async:dev      # dev/ is the Astro project; its compose override
#                                                                 # adds the BigQuery and GCS emulators
# The -base runtime runs no ONBUILD steps (those expect packages.txt and requirements.txt at the context root); the
# steps below do what they would, from dev/. Airflow and its bundled providers come from the runtime (same minor
# series as uv.lock); everything else is pinned to uv.lock through dev/requirements-lock.txt.
# The base is a build argument so the same file builds where the Astro registry is unreachable: there
# dev/containers/build-images builds a stand-in of this runtime and passes it (dev/README-devstack.md).
ARG BASE_IMAGE=astrocrpublic.azurecr.io/runtime:3.3-7-base
FROM ${BASE_IMAGE}

USER root
COPY dev/packages.txt /opt/cosmos-async/packages.txt
RUN packages="$(grep -vE '^[[:space:]]*(#|$)' /opt/cosmos-async/packages.txt || true)"; \
    if [ -n "$packages" ]; then \
        apt-get update && apt-get install -y --no-install-recommends $packages && rm -rf /var/lib/apt/lists/*; \
    fi
USER astro

COPY --chown=astro:0 dev/requirements-lock.txt dev/requirements.txt /opt/cosmos-async/
COPY --chown=astro:0 pyproject.toml README.md /opt/cosmos-async/src/
COPY --chown=astro:0 triggers /opt/cosmos-async/src/triggers
COPY --chown=astro:0 cosmos_async /opt/cosmos-async/src/cosmos_async
RUN pip install --no-cache-dir --constraint /opt/cosmos-async/requirements-lock.txt \
        /opt/cosmos-async/src/triggers /opt/cosmos-async/src --requirement /opt/cosmos-async/requirements.txt \
    && python -c "import cosmos_async, cosmos_async_triggers"

COPY --chown=astro:0 dev/dags /usr/local/airflow/dags
COPY --chown=astro:0 dev/airflow_settings.yaml /usr/local/airflow/airflow_settings.yaml

# [cosmos] settings; a deployment overrides them with its own environment (the bucket at least).
ENV AIRFLOW__COSMOS__REMOTE_TARGET_PATH=gs://cosmos-async-dev/cosmos-async \
    AIRFLOW__COSMOS__REMOTE_TARGET_PATH_CONN_ID=gcp_conn
