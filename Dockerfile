# syntax=docker/dockerfile:1
# Podium's two images from one file (docs/deployment.md):
#   --target watcher  the sidecar: `python -m watcher` and only what it needs (the `watcher`
#                     extra: the MLflow client, no trainer, XGBoost, matplotlib or pyarrow)
#   --target full     (the default, last stage) trainer, watcher and `mlflow server` of the same
#                     MLflow version: `--entrypoint python IMAGE -m trainer train ...`,
#                     `--entrypoint mlflow IMAGE server ...`; the entrypoint is the watcher too.
# scripts/image.sh builds both and smoke-tests them in a pod.
ARG PYTHON_IMAGE=python:3.11-slim

# ---- build: each venv's dependencies, then the project on its own --------------------------------
# The dependencies' layers change only with pyproject.toml; the project's files are copied into
# the runtime after them, so an edit to a module rebuilds megabytes, not the whole venv.
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
# Empty packages (and README) stand in for the sources while the dependencies install; pip then
# forgets them (and setuptools' build directory goes, or the project's wheel would hold them).
RUN mkdir trainer watcher && touch README.md trainer/__init__.py watcher/__init__.py

FROM build AS deps-watcher
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[watcher]" \
    && /opt/venv/bin/pip uninstall --yes mlflow-podium \
    && rm -r build ./*.egg-info

FROM build AS deps-full
# The postgres extra (in `full`) gives `mlflow server` a PostgreSQL driver (postgresql+psycopg://).
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m venv /opt/venv \
    && /opt/venv/bin/pip install ".[full]" \
    && /opt/venv/bin/pip uninstall --yes mlflow-podium \
    && rm -r build ./*.egg-info

# The sidecar's venv without what only installs or tests packages: pip, setuptools and the
# dependencies' own test suites (about 150 MB of its 530; pandas' tests alone are 46 MB).
FROM deps-watcher AS venv-watcher
RUN /opt/venv/bin/pip uninstall --yes pip setuptools \
    && find /opt/venv/lib -type d -name tests -prune -exec rm -r {} +

# The project alone, laid out under /opt/project as it lies in the venv: /opt/project/opt/venv/...
FROM deps-watcher AS project-watcher
RUN rm -r trainer
COPY README.md ./
COPY watcher ./watcher
RUN --mount=type=cache,target=/root/.cache/pip \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && /opt/venv/bin/pip install --no-deps --target "/opt/project${site}" . \
    && mkdir -p /opt/project/opt/venv && mv "/opt/project${site}/bin" /opt/project/opt/venv/bin \
    && rm /opt/project/opt/venv/bin/podium-trainer

FROM deps-full AS project-full
COPY README.md ./
COPY trainer ./trainer
COPY watcher ./watcher
RUN --mount=type=cache,target=/root/.cache/pip \
    site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && /opt/venv/bin/pip install --no-deps --target "/opt/project${site}" . \
    && mkdir -p /opt/project/opt/venv && mv "/opt/project${site}/bin" /opt/project/opt/venv/bin

# ---- runtime: a venv, no sources, no build tools, non-root -------------------------------------
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

# ---- the sidecar --------------------------------------------------------------------------------
FROM runtime AS watcher
COPY --from=venv-watcher /opt/venv /opt/venv
COPY --from=project-watcher /opt/project/ /

# ---- the full image (the default target) --------------------------------------------------------
FROM runtime AS full
COPY --from=deps-full /opt/venv /opt/venv
COPY --from=project-full /opt/project/ /
