"""The selected checkpoint as an MLflow model: logged, registered, and loaded back by its alias.

The loci sweep registers the checkpoint it selects for a cohort as a version of the registered
model :data:`REGISTERED_MODEL` with the alias ``selected-<cohort>``, so another cohort (or a user's
notebook) encodes scans with ``mlflow.pyfunc.load_model("models:/udip-vit-ae@selected-demo")``.
The pyfunc's input is a DataFrame with a ``cache_path`` column (preprocessed scans, as
``preprocessed_scans`` writes them) and optionally ``subject_id``; its output is one row of UDIPs
(``udip_000 ..``) and ``recon_loss`` per scan, exactly what :func:`~udip_assets.model.extract.extract_udips`
returns for the checkpoint file.

Each version carries the tags ``model_id``, ``cohort``, ``training_run`` and ``dagster_run_id``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

REGISTERED_MODEL = "udip-vit-ae"
_ALIAS_BAD = re.compile(r"[^A-Za-z0-9_-]")


def alias_for(cohort: str) -> str:
    """``selected-<cohort>`` with characters an alias may not hold replaced by '-'."""
    return "selected-" + _ALIAS_BAD.sub("-", cohort)


def model_uri(cohort: str) -> str:
    """The registry URI of a cohort's selected model, e.g. ``models:/udip-vit-ae@selected-demo``."""
    return f"models:/{REGISTERED_MODEL}@{alias_for(cohort)}"


def _python_model_class():
    import mlflow.pyfunc

    class UdipEncoder(mlflow.pyfunc.PythonModel):
        """Encode preprocessed scans into UDIPs with the logged checkpoint (on CPU unless told)."""

        def load_context(self, context) -> None:
            self.checkpoint = context.artifacts["checkpoint"]

        def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
            from udip_assets.model.extract import extract_udips

            if "cache_path" not in model_input.columns:
                raise ValueError(f"input needs a cache_path column (preprocessed scans), got {list(model_input)}")
            ids = model_input["subject_id"].astype(str).tolist() if "subject_id" in model_input else None
            params = params or {}
            return extract_udips(self.checkpoint, model_input["cache_path"].tolist(), ids,
                                 batch_size=int(params.get("batch_size", 4)), device=params.get("device", "cpu"),
                                 show_progress=False)

    return UdipEncoder


def register_checkpoint(tracking_uri: str, checkpoint: str | Path, *, cohort: str, model_id: str,
                        mlflow_run_id: str | None, tags: dict[str, str]) -> int:
    """Log ``checkpoint`` as a pyfunc model (in its training's MLflow run when given), register it
    and point the cohort's alias at the new version; returns the version number."""
    import mlflow
    import torch
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    requirements = [f"torch=={torch.__version__.split('+')[0]}", f"pandas=={pd.__version__}"]
    kwargs = {"name": f"udip-{_ALIAS_BAD.sub('-', model_id)}", "python_model": _python_model_class()(),
              "artifacts": {"checkpoint": str(checkpoint)}, "pip_requirements": requirements}
    if mlflow_run_id:
        status = client.get_run(mlflow_run_id).info.status
        with mlflow.start_run(run_id=mlflow_run_id):  # logged beside the training it came from
            info = mlflow.pyfunc.log_model(**kwargs)
        client.set_terminated(mlflow_run_id, status=status)
    else:
        info = mlflow.pyfunc.log_model(**kwargs)
    if not any(m.name == REGISTERED_MODEL for m in client.search_registered_models(f"name = '{REGISTERED_MODEL}'")):
        client.create_registered_model(REGISTERED_MODEL, description="ViT-AE checkpoints chosen by the loci sweep")
    version = client.create_model_version(REGISTERED_MODEL, info.model_uri, run_id=mlflow_run_id,
                                          tags={"model_id": model_id, "cohort": cohort, **tags})
    client.set_registered_model_alias(REGISTERED_MODEL, alias_for(cohort), version.version)
    return int(version.version)


def registered_tags(tracking_uri: str, uri: str) -> dict[str, str]:
    """The tags (``model_id``, ``training_run``, ...) of the version a ``models:/name@alias`` or
    ``models:/name/version`` URI names."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    match = re.fullmatch(r"models:/([^/@]+)(?:@([^/]+)|/(\d+))", uri)
    if match is None:
        raise ValueError(f"{uri!r} is not a registry URI such as {model_uri('demo')} or models:/{REGISTERED_MODEL}/3")
    name, alias, number = match.groups()
    version = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, number)
    return dict(version.tags)


def load_encoder(tracking_uri: str, uri: str):
    """The pyfunc model a registry URI names (``predict`` takes a DataFrame with ``cache_path``)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return mlflow.pyfunc.load_model(uri)


def checkpoint_of(tracking_uri: str, uri: str) -> Path:
    """The checkpoint file inside the logged model a registry URI names (downloaded from the artifact store)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
    found = sorted(local.rglob("*.pt"))
    if not found:
        raise FileNotFoundError(f"the model {uri} holds no .pt checkpoint under {local}")
    return found[0]
