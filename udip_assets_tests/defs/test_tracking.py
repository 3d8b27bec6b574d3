"""The MLflow resource against a real local sqlite tracking store."""

import pytest
from mlflow.tracking import MlflowClient

from udip_assets.defs.tracking import MlflowTracking, flatten


def test_run_holds_params_metrics_artifacts_and_tags(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = MlflowTracking(tracking_uri=uri, experiment="t", artifact_root=str(tmp_path / "art"))
    png = tmp_path / "recon.png"
    png.write_bytes(b"\x89PNG fake")
    with tracking.start_run("train", params={"model": {"enc_dim": 128}, "lr": 1e-3}, tags={"cohort": "c1"}) as run:
        run.log_metrics({"train_loss": 0.5, "val_loss": 0.6}, step=0)
        run.log_metrics({"train_loss": 0.4, "val_loss": 0.55}, step=1)
        run.log_artifact(png, artifact_path="figures")
    client = MlflowClient(tracking_uri=uri)
    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED"
    assert got.data.params == {"model.enc_dim": "128", "lr": "0.001"}
    assert got.data.tags["cohort"] == "c1" and "git_commit" in got.data.tags
    history = [m.value for m in client.get_metric_history(run.run_id, "train_loss")]
    assert history == [0.5, 0.4]
    assert [a.path for a in client.list_artifacts(run.run_id, "figures")] == ["figures/recon.png"]
    assert (tmp_path / "art").exists()


def test_failed_block_marks_the_run_failed(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = MlflowTracking(tracking_uri=uri, experiment="t", artifact_root=str(tmp_path / "art"))
    with pytest.raises(RuntimeError):
        with tracking.start_run("train", params={}, tags={}) as run:
            raise RuntimeError("boom")
    assert MlflowClient(tracking_uri=uri).get_run(run.run_id).info.status == "FAILED"


def test_flatten_nests_with_dots():
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": 2}) == {"a.b": "1", "a.c.d": "x", "e": "2"}
