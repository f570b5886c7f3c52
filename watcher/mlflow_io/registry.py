"""Model Registry calls and the experiment tags that keep handlers' pending work
(watcher.registry, watcher.notify).

Kept apart from the ranking calls; every call still goes through ``MlflowTracking._call``, so
it is counted and its errors become :class:`TrackingError`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from mlflow.exceptions import MlflowException

from watcher.errors import TrackingError, TrackingNotFound
from watcher.mlflow_io.client import MlflowTracking
from watcher.model import ModelSource, ModelVersionInfo


def _quote(value: str) -> str:
    """A string literal for MLflow's registry filter grammar."""
    return f'"{value}"' if "'" in value else f"'{value}'"


class MlflowRegistry:
    """Model Registry calls and the experiment tags that keep handlers' pending work.

    Implements ``watcher.registry.RegistryStore`` and ``watcher.notify.ExperimentTagStore``.
    """

    def __init__(self, tracking: MlflowTracking) -> None:
        self._tracking = tracking
        self._client = tracking._client

    def _call(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return self._tracking._call(name, fn, *args, **kwargs)

    # -- experiment tags ---------------------------------------------------------------------

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        self._tracking.set_experiment_tag(experiment_id, key, value)

    def delete_experiment_tag(self, experiment_id: str, key: str) -> None:
        self._tracking.delete_experiment_tag(experiment_id, key)

    # -- runs --------------------------------------------------------------------------------

    def get_run_tag(self, run_id: str, key: str) -> str | None:
        run = self._call("get_run", self._client.get_run, run_id)
        return run.data.tags.get(key)

    def find_model_source(self, run_id: str) -> ModelSource | None:
        """The run's model: its MLflow 3 LoggedModel, else a `model/MLmodel` artifact, else None.

        With several logged models the one named "model" wins, then the latest step.
        """
        run = self._call("get_run", self._client.get_run, run_id)
        outputs = list(run.outputs.model_outputs) if run.outputs is not None else []
        candidates = []
        for output in outputs:
            model = self._call("get_logged_model", self._client.get_logged_model, output.model_id)
            if str(model.status) == "FAILED":
                continue
            candidates.append((model.name == "model", output.step, model.model_id))
        if candidates:
            model_id = max(candidates)[2]
            return ModelSource(uri=f"models:/{model_id}", model_id=model_id)
        artifacts = self._call("list_artifacts", self._client.list_artifacts, run_id, "model")
        if any(a.path == "model/MLmodel" for a in artifacts):
            # What mlflow.register_model does for runs:/ URIs: register the artifact location.
            return ModelSource(uri=f"{run.info.artifact_uri.rstrip('/')}/model")
        return None

    # -- registered models -------------------------------------------------------------------

    def get_model_version_by_alias(self, name: str, alias: str) -> ModelVersionInfo | None:
        try:
            mv = self._call(
                "get_model_version_by_alias", self._client.get_model_version_by_alias, name, alias
            )
        except TrackingNotFound:
            return None
        return _model_version(mv)

    def find_model_version(self, name: str, run_id: str) -> ModelVersionInfo | None:
        """The latest version of `name` registered from `run_id`, if any."""
        found = self._call(
            "search_model_versions",
            self._client.search_model_versions,
            filter_string=f"name = {_quote(name)} AND run_id = {_quote(run_id)}",
            max_results=1,
            order_by=["version_number DESC"],
        )
        return _model_version(found[0]) if found else None

    def search_model_versions_by_tag(self, name: str, key: str, value: str) -> list[ModelVersionInfo]:
        found = self._call(
            "search_model_versions",
            self._client.search_model_versions,
            filter_string=f"name = {_quote(name)} AND tags.`{key}` = {_quote(value)}",
        )
        return [_model_version(mv) for mv in found]

    def register_model_version(
        self, name: str, source: ModelSource, run_id: str, tags: Mapping[str, str]
    ) -> ModelVersionInfo:
        """Create the registered model if needed, then a new version from `source`."""
        try:
            self._call("create_registered_model", self._client.create_registered_model, name)
        except TrackingError as e:
            cause = e.__cause__
            if not (
                isinstance(cause, MlflowException)
                and cause.error_code in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")
            ):
                raise
        mv = self._call(
            "create_model_version",
            lambda: self._client.create_model_version(
                name=name,
                source=source.uri,
                run_id=run_id,
                tags=dict(tags),
                model_id=source.model_id,
                await_creation_for=0,  # the OSS stores create versions READY at once
            ),
        )
        return _model_version(mv)

    def set_model_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        self._call("set_model_version_tag", self._client.set_model_version_tag, name, version, key, value)

    def delete_model_version_tag(self, name: str, version: str, key: str) -> None:
        with contextlib.suppress(TrackingNotFound):
            self._call("delete_model_version_tag", self._client.delete_model_version_tag, name, version, key)

    def set_registered_model_alias(self, name: str, alias: str, version: str) -> None:
        self._call(
            "set_registered_model_alias",
            self._client.set_registered_model_alias,
            name,
            alias,
            version,
        )


def _model_version(mv: Any) -> ModelVersionInfo:
    return ModelVersionInfo(
        name=mv.name, version=str(mv.version), run_id=mv.run_id or None, tags=dict(mv.tags or {})
    )
