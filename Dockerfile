# syntax=docker/dockerfile:1
# Podium image: the watcher sidecar by default (`python -m watcher`); the same image runs the
# trainer (`--entrypoint python ... -m trainer`) and, in docker-compose.yml, the MLflow server,
# so client and server always run the same MLflow version.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: the project as a wheel, installed with its dependencies into /opt/venv ----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY trainer ./trainer
COPY watcher ./watcher
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && python -m venv /opt/venv
# The postgres extra gives `mlflow server` a PostgreSQL driver (postgresql+psycopg://).
RUN wheel="$(ls /dist/*.whl)" \
    && /opt/venv/bin/pip install --no-cache-dir "${wheel}[postgres]"

# ---- runtime: the venv only, no sources, no build tools, non-root -----------------------------
FROM ${PYTHON_IMAGE} AS runtime
# MLflow's client default is 7 retries with minutes of back-off. `python -m watcher` lowers them
# itself at start (a pass fails fast and the next one tries again; /healthz shows it); set here
# too, they hold for the trainer run from this image as well.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MLFLOW_HTTP_REQUEST_MAX_RETRIES=2 \
    MLFLOW_HTTP_REQUEST_TIMEOUT=30 \
    PODIUM_WATCHER_CONFIG=/etc/podium/watcher.yaml
RUN groupadd --system --gid 10001 podium \
    && useradd --system --uid 10001 --gid podium --create-home --home-dir /home/podium \
       --shell /usr/sbin/nologin podium \
    && mkdir -p /var/lib/mlflow/artifacts \
    && chown podium:podium /var/lib/mlflow/artifacts
COPY --from=build /opt/venv /opt/venv
COPY config/ /etc/podium/
USER 10001:10001
WORKDIR /home/podium
EXPOSE 8265
# python:3.11-slim has no curl: probe with the standard library. urlopen raises on 503 and on a
# refused connection, so the exit status is the verdict.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WATCHER_HTTP__PORT', '8265'), timeout=4)"]
# Exec form: Python is PID 1 and receives SIGTERM itself (graceful shutdown, exit 0).
ENTRYPOINT ["python", "-m", "watcher"]
# The config is read from $PODIUM_WATCHER_CONFIG (/etc/podium/watcher.yaml): mount your own file
# there or pass --config; override any key with env WATCHER_<KEY> (nested keys joined by __,
# e.g. WATCHER_HTTP__PORT). Extra arguments (`--once`, `check-config`) keep that config.
CMD ["--log-format", "json"]
