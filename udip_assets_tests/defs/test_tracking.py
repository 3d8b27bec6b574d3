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


def test_a_resumed_training_reopens_its_run_and_records_changed_params(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracking = MlflowTracking(tracking_uri=uri, experiment="t", artifact_root=str(tmp_path / "art"))
    tags = {"training_run": "c1-abc", "dagster_run_id": "first"}
    with tracking.start_run("c1-abc", params={"epochs": 10}, tags=tags, resume_tag="training_run") as first:
        first.log_metrics({"val_loss": 0.5}, step=10)
    with tracking.start_run("c1-abc", params={"epochs": 20}, tags={**tags, "dagster_run_id": "second"},
                            resume_tag="training_run") as second:
        second.log_metrics({"val_loss": 0.4}, step=20)
    other_tags = {"training_run": "c1-other"}
    with tracking.start_run("c1-other", params={}, tags=other_tags, resume_tag="training_run") as other:
        pass
    assert second.run_id == first.run_id != other.run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED" and run.data.params["epochs"] == "10"
    assert run.data.tags["resumed.epochs"] == "20" and run.data.tags["dagster_run_id"] == "second"
    assert [m.step for m in client.get_metric_history(first.run_id, "val_loss")] == [10, 20]
