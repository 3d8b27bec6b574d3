"""Checks of a Kubernetes deployment's configuration against Dagster's own config schema.

There is no cluster to try a deployment on before it is installed, so what can be checked is
checked here, with Dagster's and dagster-k8s's schemas rather than our own reading of them:

- ``dagster.yaml`` (the instance): the instance schema, then every class it names (run launcher,
  run coordinator, storages, compute logs) against that class's config schema, as Dagster does
  when an instance starts, without connecting to Postgres or to the cluster;
- the Helm values: the sections the chart turns into instance config (the run launcher, the run
  queue) are translated key by key into that config and validated the same way; a key we do not
  know how the chart translates is refused rather than passed over; the user deployment must run
  the udip code location with ``UDIP_COMPUTE=k8s`` and mount UDIP_HOME;
- :func:`step_job` builds, with dagster-k8s's own ``construct_dagster_k8s_job``, the Kubernetes Job
  that the executor would submit for one step, so the GPU requests of a step's tags can be read off
  the pod spec.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from udip_assets.errors import UdipConfigError

CLASS_SECTIONS = ("run_launcher", "run_coordinator", "compute_logs", "run_storage", "event_log_storage",
                  "schedule_storage", "scheduler", "secrets")
CODE_LOCATION_MODULE = "udip_assets.definitions"

# Helm key -> K8sRunLauncher config key, for the keys whose value the chart passes through as is.
_HELM_RUN_LAUNCHER_KEYS = {
    "jobNamespace": "job_namespace", "loadInclusterConfig": "load_incluster_config",
    "kubeconfigFile": "kubeconfig_file", "envVars": "env_vars", "volumes": "volumes",
    "volumeMounts": "volume_mounts", "labels": "labels", "resources": "resources",
    "schedulerName": "scheduler_name", "securityContext": "security_context",
    "failPodOnRunFailure": "fail_pod_on_run_failure", "imagePullPolicy": "image_pull_policy",
}
_HELM_RUN_K8S_CONFIG_KEYS = {
    "containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
    "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
    "jobMetadata": "job_metadata",
}
_HELM_QUEUE_KEYS = {
    "maxConcurrentRuns": "max_concurrent_runs", "tagConcurrencyLimits": "tag_concurrency_limits",
    "dequeueIntervalSeconds": "dequeue_interval_seconds",
}


class DeployConfigError(UdipConfigError):
    """A deployment file that Dagster would refuse; ``problems`` lists every one."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


def _errors(result) -> list[str]:
    """The errors' messages, without the stack trace Dagster appends to an environment variable's."""
    return [e.message.split("\n\nStack Trace")[0].replace("\ndagster._config.errors.PostProcessingError", "")
            for e in result.errors]


def env_names(value: Any) -> list[str]:
    """Every NAME of an ``{env: NAME}`` value anywhere in a loaded YAML document."""
    if isinstance(value, Mapping):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return [value["env"]]
        return [n for v in value.values() for n in env_names(v)]
    if isinstance(value, list):
        return [n for v in value for n in env_names(v)]
    return []


@contextmanager
def placeholder_env(names: list[str]) -> Iterator[list[str]]:
    """Set each unset variable of ``names`` to a placeholder for the block (a secret the pods get and
    this machine need not have); yields the names it set."""
    unset = sorted({n for n in names if n not in os.environ})
    os.environ.update({n: "placeholder" for n in unset})
    try:
        yield unset
    finally:
        for n in unset:
            os.environ.pop(n, None)


def check_class_config(section: str, module: str, klass: str, config: Mapping[str, Any] | None) -> list[str]:
    """Problems of ``config`` for the configurable class ``module.klass`` (empty when Dagster accepts it)."""
    from dagster._config import process_config, resolve_to_config_type

    where = f"{section} ({module}.{klass})"
    try:
        cls = getattr(importlib.import_module(module), klass)
    except (ImportError, AttributeError) as exc:
        return [f"{where}: cannot be imported ({exc}); install the package that provides it"]
    result = process_config(resolve_to_config_type(cls.config_type()), dict(config or {}))
    return [] if result.success else [f"{where}: {m}" for m in _errors(result)]


def check_instance_yaml(path: Path) -> list[str]:
    """Every problem Dagster would raise loading ``path`` as an instance's dagster.yaml, classes included.

    Values given as ``{env: NAME}`` are resolved as Dagster resolves them: an unset variable is a
    problem (wrap the call in :func:`placeholder_env` to check a file whose secrets only the pods have).
    """
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config

    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    try:
        config, _ = dagster_instance_config(str(path.parent), path.name)
    except DagsterInvalidConfigError as exc:
        return [f"{path}: {m}" for m in (exc.errors and [e.message for e in exc.errors] or [str(exc)])]
    problems = []
    for section in CLASS_SECTIONS:
        value = config.get(section)
        if isinstance(value, Mapping) and "module" in value and "class" in value:
            problems += [f"{path}: {p}" for p in
                         check_class_config(section, value["module"], value["class"], value.get("config"))]
    if "run_queue" in config:
        problems += [f"{path}: {p}" for p in check_class_config(
            "run_queue", "dagster._core.run_coordinator", "QueuedRunCoordinator", config["run_queue"])]
    storage = config.get("storage") or {}
    if "postgres" in storage:
        from dagster_postgres import PostgresRunStorage

        problems += [f"{path}: {p}" for p in check_class_config(
            "storage.postgres", PostgresRunStorage.__module__, "PostgresRunStorage", storage["postgres"])]
    return problems


def _translate(section: Mapping[str, Any], keys: Mapping[str, str], where: str,
               problems: list[str]) -> dict[str, Any]:
    out = {}
    for key, value in section.items():
        if key not in keys:
            problems.append(f"{where}.{key}: not a key udip knows how the chart passes on; add it to "
                            f"udip_assets/cluster/k8s.py or remove it")
            continue
        out[keys[key]] = value
    return out


def helm_run_launcher_config(values: Mapping[str, Any], problems: list[str]) -> dict[str, Any]:
    """The K8sRunLauncher config the chart writes for ``runLauncher.config.k8sRunLauncher``.

    The chart also fills in what it owns (the instance ConfigMap, DAGSTER_HOME, the Postgres
    secret, the service account); those are added here as the chart would name them.
    """
    where = "runLauncher.config.k8sRunLauncher"
    section = dict(((values.get("runLauncher") or {}).get("config") or {}).get("k8sRunLauncher") or {})
    out: dict[str, Any] = {}
    if "image" in section:
        image = section.pop("image") or {}
        out["job_image"] = f"{image.get('repository')}:{image.get('tag')}"
        if image.get("pullPolicy"):
            out["image_pull_policy"] = image["pullPolicy"]
    for key, name in (("envConfigMaps", "env_config_maps"), ("envSecrets", "env_secrets")):
        if key in section:
            out[name] = [item["name"] if isinstance(item, Mapping) else item for item in section.pop(key) or []]
    if "runK8sConfig" in section:
        out["run_k8s_config"] = _translate(section.pop("runK8sConfig") or {}, _HELM_RUN_K8S_CONFIG_KEYS,
                                           f"{where}.runK8sConfig", problems)
    out.update(_translate(section, _HELM_RUN_LAUNCHER_KEYS, where, problems))
    glob = values.get("global") or {}
    out.setdefault("instance_config_map", "dagster-instance")
    out.setdefault("dagster_home", glob.get("dagsterHome") or "/opt/dagster/dagster_home")
    out.setdefault("postgres_password_secret", glob.get("postgresqlSecretName") or "dagster-postgresql-secret")
    return out


def check_helm_values(path: Path) -> list[str]:
    """Problems of the Helm values at ``path`` (see the module docstring for what is checked)."""
    path = Path(path)
    if not path.is_file():
        return [f"{path}: no such file"]
    values = yaml.safe_load(path.read_text()) or {}
    problems: list[str] = []
    launcher = (values.get("runLauncher") or {})
    if launcher.get("type") != "K8sRunLauncher":
        problems.append(f"runLauncher.type is {launcher.get('type')!r}; udip's steps need K8sRunLauncher")
    else:
        config = helm_run_launcher_config(values, problems)
        problems += check_class_config("runLauncher", "dagster_k8s", "K8sRunLauncher", config)
    coordinator = ((values.get("dagsterDaemon") or {}).get("runCoordinator") or {})
    if coordinator.get("enabled") and coordinator.get("type") == "QueuedRunCoordinator":
        queued = (coordinator.get("config") or {}).get("queuedRunCoordinator") or {}
        config = _translate(queued, _HELM_QUEUE_KEYS, "dagsterDaemon.runCoordinator.config.queuedRunCoordinator",
                            problems)
        problems += check_class_config("runCoordinator", "dagster._core.run_coordinator", "QueuedRunCoordinator",
                                       config)
    problems += _check_user_deployment(values)
    return [f"{path}: {p}" for p in problems]


def _check_user_deployment(values: Mapping[str, Any]) -> list[str]:
    deployments = ((values.get("dagster-user-deployments") or {}).get("deployments") or [])
    ours = [d for d in deployments if CODE_LOCATION_MODULE in (d.get("dagsterApiGrpcArgs") or
                                                                  d.get("codeServerArgs") or [])]
    if not ours:
        return [f"dagster-user-deployments.deployments: none runs -m {CODE_LOCATION_MODULE}"]
    problems = []
    for d in ours:
        where = f"dagster-user-deployments.deployments[{d.get('name')}]"
        env = {e.get("name"): e.get("value") for e in d.get("env") or [] if isinstance(e, Mapping)}
        if env.get("UDIP_COMPUTE") != "k8s":
            problems.append(f"{where}.env: UDIP_COMPUTE is {env.get('UDIP_COMPUTE')!r}, not 'k8s' (steps would run "
                            f"in the run pod, without their GPU requests)")
        mounts = [m.get("mountPath") for m in d.get("volumeMounts") or []]
        if not env.get("UDIP_HOME") or env["UDIP_HOME"] not in mounts:
            problems.append(f"{where}: UDIP_HOME {env.get('UDIP_HOME')!r} is not one of its volumeMounts {mounts}; "
                            f"every pod must see the same UDIP_HOME")
        if not (d.get("includeConfigInLaunchedRuns") or {}).get("enabled"):
            problems.append(f"{where}.includeConfigInLaunchedRuns.enabled must be true, so run and step pods get "
                            f"its env and volume")
    return problems


def check_deployment(folder: Path) -> tuple[list[str], list[str]]:
    """Problems of ``folder``'s ``dagster.yaml`` and ``values.yaml`` (both checked when present), and the
    environment variables the instance reads that were not set here (checked with placeholders: the
    pods must have them)."""
    folder = Path(folder)
    found = [name for name in ("dagster.yaml", "values.yaml") if (folder / name).is_file()]
    if not found:
        return [f"{folder}: neither dagster.yaml nor values.yaml is there"], []
    problems, placeholders = [], []
    if "dagster.yaml" in found:
        instance = folder / "dagster.yaml"
        with placeholder_env(env_names(yaml.safe_load(instance.read_text()))) as placeholders:
            problems += check_instance_yaml(instance)
    if "values.yaml" in found:
        problems += check_helm_values(folder / "values.yaml")
    return problems, placeholders


def step_job(run_launcher_config: Mapping[str, Any], step_tags: Mapping[str, str], image: str,
             step_key: str = "step"):
    """The Kubernetes Job dagster-k8s builds for one step: the run launcher's pod settings merged with
    the step's ``dagster-k8s/config`` tag, as the k8s_job_executor merges them. A ``V1Job``."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import (
        DagsterK8sJobConfig,
        UserDefinedDagsterK8sConfig,
        construct_dagster_k8s_job,
        get_user_defined_k8s_config,
    )

    fields = set(DagsterK8sJobConfig._fields)
    job_config = DagsterK8sJobConfig(**{k: v for k, v in run_launcher_config.items() if k in fields})
    if not job_config.job_image:
        job_config = job_config.with_image(image)
    run_k8s = UserDefinedDagsterK8sConfig.from_dict(run_launcher_config.get("run_k8s_config") or {})
    context = K8sContainerContext(run_k8s_config=run_k8s).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(dict(step_tags))))
    name = re.sub(r"[^a-z0-9-]", "-", f"dagster-step-{step_key}".lower())[:63]
    return construct_dagster_k8s_job(job_config=job_config, args=["dagster", "api", "execute_step"],
                                     job_name=name, user_defined_k8s_config=context.run_k8s_config,
                                     component="step_worker", env_vars=[])

