"""The Kubernetes deployment, checked without a cluster: the shipped dagster.yaml and Helm values
validate against Dagster's and dagster-k8s's config schemas (and broken copies are refused, each
problem named); the two files say the same thing; the definitions load under UDIP_COMPUTE=k8s with
the k8s job executor, and the pod dagster-k8s would submit for the training step asks for a GPU
while a GWAS partition's does not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from udip_assets.cli import main
from udip_assets.cluster.k8s import check_deployment, check_instance_yaml, helm_run_launcher_config, placeholder_env

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy" / "k8s"


def test_the_shipped_deployment_validates():
    problems, placeholders = check_deployment(DEPLOY)
    assert problems == []
    assert placeholders == ["DAGSTER_PG_PASSWORD"]  # the one secret; the pods get it from the chart's secret
    result = CliRunner().invoke(main, ["deploy-check", str(DEPLOY)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output


def _broken_copy(tmp_path: Path, instance_edit, values_edit) -> Path:
    folder = tmp_path / "k8s"
    shutil.copytree(DEPLOY, folder)
    for name, edit in (("dagster.yaml", instance_edit), ("values.yaml", values_edit)):
        doc = yaml.safe_load((folder / name).read_text())
        edit(doc)
        (folder / name).write_text(yaml.safe_dump(doc))
    return folder


def test_a_broken_deployment_is_refused_with_each_problem(tmp_path):
    def break_instance(doc):
        doc["run_launcher"]["config"]["job_namespac"] = doc["run_launcher"]["config"].pop("job_namespace")
        doc["run_launcher"]["config"]["env_vars"] = "UDIP_HOME=/data/udip"  # a string, not a list

    def break_values(doc):
        launcher = doc["runLauncher"]["config"]["k8sRunLauncher"]
        launcher["jobNamespac"] = launcher.pop("jobNamespace")
        launcher["loadInclusterConfig"] = "yes"
        deployment = doc["dagster-user-deployments"]["deployments"][0]
        deployment["env"] = [e for e in deployment["env"] if e["name"] != "UDIP_COMPUTE"]
        deployment["volumeMounts"] = []
        queue = doc["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
        queue["maxConcurrentRuns"] = "eight"

    folder = _broken_copy(tmp_path, break_instance, break_values)
    problems, _ = check_deployment(folder)
    text = "\n".join(problems)
    assert "job_namespac" in text and "env_vars" in text  # dagster-k8s's K8sRunLauncher schema
    assert "jobNamespac: not a key" in text
    assert "load_incluster_config" in text  # 'yes' is not a bool to Dagster
    assert "max_concurrent_runs" in text
    assert "UDIP_COMPUTE is None" in text
    assert "is not one of its volumeMounts" in text
    assert all(p.startswith(str(folder)) for p in problems)  # each names its file
    result = CliRunner().invoke(main, ["deploy-check", str(folder)])
    assert result.exit_code != 0 and "jobNamespac" in result.output


def test_an_unset_secret_is_a_problem_outside_the_placeholders(tmp_path, monkeypatch):
    monkeypatch.delenv("DAGSTER_PG_PASSWORD", raising=False)
    problems = check_instance_yaml(DEPLOY / "dagster.yaml")
    assert len(problems) == 1 and "DAGSTER_PG_PASSWORD" in problems[0] and "Stack Trace" not in problems[0]
    with placeholder_env(["DAGSTER_PG_PASSWORD"]) as set_here:
        assert set_here == ["DAGSTER_PG_PASSWORD"] and check_instance_yaml(DEPLOY / "dagster.yaml") == []
    assert "DAGSTER_PG_PASSWORD" not in os.environ


def test_the_helm_values_mean_the_instance_yaml():
    values = yaml.safe_load((DEPLOY / "values.yaml").read_text())
    instance = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    problems: list[str] = []
    from_helm = helm_run_launcher_config(values, problems)
    assert problems == []
    launcher = instance["run_launcher"]["config"]
    for key, value in from_helm.items():
        assert launcher[key] == value, key
    queue = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert instance["run_queue"]["max_concurrent_runs"] == queue["maxConcurrentRuns"]
    # the user deployment runs what the Dockerfile builds, on the port it exposes
    deployment = values["dagster-user-deployments"]["deployments"][0]
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert f"EXPOSE {deployment['port']}" in dockerfile
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "udip_assets.definitions"]
    workspace = yaml.safe_load((REPO / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["module_name"] == "udip_assets.definitions"
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert f"UDIP_HOME={env['UDIP_HOME']}" in launcher["env_vars"] and "UDIP_COMPUTE=k8s" in launcher["env_vars"]


_UNDER_K8S = r"""
import json, sys, yaml
import dagster as dg
from kubernetes.client import ApiClient
from udip_assets.definitions import defs
from udip_assets.cluster.k8s import step_job

job = defs.resolve_implicit_global_asset_job_def()
launcher = yaml.safe_load(open(sys.argv[1]))["run_launcher"]["config"]
out = {"executor": job.executor_def.name, "pods": {}}
for node in job.graph.node_dict.values():
    spec = ApiClient().sanitize_for_serialization(step_job(launcher, node.tags, "udip:test", node.name))
    pod = spec["spec"]["template"]["spec"]
    out["pods"][node.name] = {"resources": pod["containers"][0].get("resources") or {},
                              "tolerations": pod.get("tolerations") or [],
                              "mounts": [m["mountPath"] for m in pod["containers"][0].get("volumeMounts") or []]}
override = {"execution": {"config": {"per_step_k8s_config": {
    "vit_ae_model": {"container_config": {"resources": {"limits": {"nvidia.com/gpu": "4"}}}}}}}}
out["override"] = dg.validate_run_config(job, override)["execution"]["udip_k8s"]["max_concurrent"]
typo = {"execution": {"config": {"per_step_k8s_config": {"vit_ae_model": {"container_confg": {}}}}}}
try:
    dg.validate_run_config(job, typo)
    out["typo"] = "accepted"
except dg.DagsterInvalidConfigError as exc:
    out["typo"] = str(exc)
print("RESULT " + json.dumps(out))
"""


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UDIP_K8S")}
    return {**env, "PYTHONWARNINGS": "ignore", **extra}


def test_the_definitions_load_under_k8s_with_gpu_steps():
    done = subprocess.run([sys.executable, "-c", _UNDER_K8S, str(DEPLOY / "dagster.yaml")],
                          env=_env(UDIP_COMPUTE="k8s", UDIP_K8S_MAX_CONCURRENT="3"), cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert out["executor"] == "udip_k8s"
    assert out["override"] == 3  # $UDIP_K8S_MAX_CONCURRENT is the default a run may change
    assert "container_confg" in out["typo"]
    pods = out["pods"]
    for gpu_step in ("vit_ae_model", "udip_embeddings", "checkpoint_loci_sweep", "perdi_maps", "attention_maps",
                     "saliency_maps"):
        assert pods[gpu_step]["resources"]["limits"] == {"nvidia.com/gpu": "1"}, gpu_step
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pods[gpu_step]["tolerations"]
    assert "limits" not in pods["gwas_sumstats"]["resources"]
    assert pods["gwas_sumstats"]["resources"]["requests"]["cpu"] == "8"
    assert all(p["mounts"] == ["/data/udip"] for p in pods.values())  # every step sees the one UDIP_HOME


def test_dagster_loads_the_code_location_under_k8s():
    """Dagster's own loader (the one the code server runs) accepts the definitions with the k8s executor."""
    dagster = Path(sys.executable).with_name("dagster")
    if not dagster.exists():
        pytest.fail(f"{dagster} is missing: make install puts the dagster CLI beside this interpreter")
    done = subprocess.run([str(dagster), "definitions", "validate", "-m", "udip_assets.definitions"],
                          env=_env(UDIP_COMPUTE="k8s", UDIP_K8S_GPUS="2"), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]


def test_local_runs_keep_the_in_process_executor_and_no_k8s_tags():
    from udip_assets.definitions import defs

    job = defs.resolve_implicit_global_asset_job_def()
    if os.environ.get("UDIP_COMPUTE") == "k8s":
        pytest.fail("the test session must not run with UDIP_COMPUTE=k8s")
    assert job.executor_def.name == "in_process"
    assert not any("dagster-k8s/config" in node.tags for node in job.graph.node_dict.values())


def test_a_bad_gpu_count_is_refused(monkeypatch):
    from udip_assets.defs.compute import step_tags

    monkeypatch.setenv("UDIP_COMPUTE", "k8s")
    monkeypatch.setenv("UDIP_K8S_GPUS", "two")
    with pytest.raises(ValueError, match="UDIP_K8S_GPUS='two'"):
        step_tags("gpu")
    monkeypatch.setenv("UDIP_K8S_GPUS", "0")  # CPU-only cluster: no GPU limit, no toleration
    config = json.loads(step_tags("gpu")["dagster-k8s/config"])
    assert "limits" not in config["container_config"]["resources"] and "pod_spec_config" not in config
    monkeypatch.setenv("UDIP_COMPUTE", "k9s")
    with pytest.raises(ValueError, match="k9s"):
        step_tags("cpu")
