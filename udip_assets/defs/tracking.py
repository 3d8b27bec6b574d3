"""MLflow tracking as a small Dagster resource.

The dagster-mlflow package is a legacy op-style ``@resource`` whose end-of-run hook does not fire
for assets; this resource wraps ``mlflow`` directly. Runs go to a local sqlite store
(``sqlite:///$UDIP_HOME/mlflow.db``) with artifacts under ``$UDIP_HOME/artifacts/mlflow``. Nothing
here may log a subject identifier: params are the resolved config, metrics are aggregates.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg

from udip_assets import paths


def git_commit(cwd: Path | None = None) -> str:
    """The current git commit of the code, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> flat ``{"model.enc_dim": "128"}`` (MLflow params are flat strings)."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        else:
            flat[name] = str(value)[:500]
    return flat


class TrackedRun:
    """The handle an asset logs through while its MLflow run is active."""

    def __init__(self, client, run_id: str) -> None:
        self._client = client
        self.run_id = run_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self._client.log_metric(self.run_id, key, float(value), step=step)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        self._client.log_artifact(self.run_id, str(path), artifact_path=artifact_path)

    def set_tag(self, key: str, value: str) -> None:
        self._client.set_tag(self.run_id, key, value)


class MlflowTracking(dg.ConfigurableResource):
    """Where MLflow runs go. Defaults resolve under ``$UDIP_HOME`` when the run starts."""

    tracking_uri: str | None = None
    experiment: str = "udip"
    artifact_root: str | None = None

    def resolved_uri(self) -> str:
        return self.tracking_uri or f"sqlite:///{paths.mlflow_db_path()}"

    def _client(self):
        import mlflow
        from mlflow.tracking import MlflowClient

        mlflow.set_tracking_uri(self.resolved_uri())
        paths.udip_home().mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.resolved_uri())

    def _experiment_id(self, client) -> str:
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            return found.experiment_id
        root = Path(self.artifact_root) if self.artifact_root else paths.artifacts_dir() / "mlflow"
        root.mkdir(parents=True, exist_ok=True)
        return client.create_experiment(self.experiment, artifact_location=root.resolve().as_uri())

    ui_url: str = "http://127.0.0.1:5000"

    def run_url(self, run_id: str) -> str:
        """The run's page in the MLflow UI that ``make mlflow-ui`` serves at ``ui_url``."""
        client = self._client()
        return f"{self.ui_url.rstrip('/')}/#/experiments/{self._experiment_id(client)}/runs/{run_id}"

    def log_to_run(self, run_id: str, metrics: Mapping[str, float], step: int) -> None:
        """Add metrics to an existing (finished) run, e.g. the loci count of a training run's checkpoint."""
        TrackedRun(self._client(), run_id).log_metrics(metrics, step=step)

    @contextmanager
    def start_run(self, run_name: str, params: Mapping[str, Any], tags: Mapping[str, str],
                  resume_tag: str | None = None) -> Iterator[TrackedRun]:
        """Open a run, log params and tags (plus the git commit), close it as FINISHED or FAILED.

        With ``resume_tag`` (e.g. ``training_run``), a run whose tag of that name equals
        ``tags[resume_tag]`` is reopened instead of a new one started: one MLflow run per training,
        however many times it is resumed. Params are immutable in MLflow: a resumed run keeps the
        first value and records a changed one (e.g. more epochs) as the tag ``resumed.<param>``.
        """
        client = self._client()
        experiment = self._experiment_id(client)
        run_id = self._run_to_resume(client, experiment, resume_tag, tags) if resume_tag else None
        if run_id is None:
            run_id = client.create_run(experiment, run_name=run_name,
                                       tags={"git_commit": git_commit(), **tags}).info.run_id
            logged: dict[str, str] = {}
        else:
            client.update_run(run_id, status="RUNNING")
            for key, value in {"git_commit": git_commit(), **tags}.items():
                client.set_tag(run_id, key, value)
            logged = client.get_run(run_id).data.params
        handle = TrackedRun(client, run_id)
        for key, value in flatten(params).items():
            if key not in logged:
                client.log_param(run_id, key, value)
            elif logged[key] != value:
                client.set_tag(run_id, f"resumed.{key}", value)
        try:
            yield handle
        except BaseException:
            client.set_terminated(run_id, status="FAILED")
            raise
        client.set_terminated(run_id, status="FINISHED")

    @staticmethod
    def _run_to_resume(client, experiment: str, resume_tag: str, tags: Mapping[str, str]) -> str | None:
        value = tags.get(resume_tag)
        if value is None:
            raise ValueError(f"resume_tag {resume_tag!r} must be one of the tags given, got {sorted(tags)}")
        found = client.search_runs([experiment], filter_string=f"tags.{resume_tag} = '{value}'", max_results=1,
                                   order_by=["attributes.start_time DESC"])
        return found[0].info.run_id if found else None
