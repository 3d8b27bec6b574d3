"""Session fixtures: a private UDIP_HOME and one small synthetic cohort with every fault."""

from __future__ import annotations

import os

import pytest

from udip_assets.cohort.synthetic import PlantedEffect, SynthConfig

TINY_EFFECTS = (
    PlantedEffect("ventricles", variance_explained=0.45),
    PlantedEffect("hippocampus", variance_explained=0.45),
    PlantedEffect("thalamus", kind="shape", variance_explained=0.3),
)


def tiny_config(name: str = "tiny", seed: int = 11, with_faults: bool = True, n_subjects: int = 60) -> SynthConfig:
    """A cohort small enough for tests: 60 subjects, 2 mm, two 3 Mb chromosomes, three planted SNPs."""
    return SynthConfig(
        name=name, n_subjects=n_subjects, resolution_mm=2, seed=seed, with_faults=with_faults,
        chromosomes=(6, 11), chrom_length_bp=3_000_000, min_causal_spacing_bp=800_000,
        second_visit_fraction=0.2, effects=TINY_EFFECTS,
    )


def pytest_configure(config):
    """Build the dbt manifest before any test module imports the Definitions (dagster-dbt reads it)."""
    from udip_assets.defs.dbt_project import prepare_manifest

    prepare_manifest()


_MISSING_TOOL = ("is not on PATH", "not installed")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped for a missing reference tool (plink2, chromium, ...) fails."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI", "").lower() == "true" and report.skipped and isinstance(report.longrepr, tuple):
        reason = str(report.longrepr[2])
        if any(marker in reason for marker in _MISSING_TOOL):
            report.outcome = "failed"
            report.longrepr = f"CI=true and a reference tool is missing ({reason}); `make test-tools` installs it"


@pytest.fixture(scope="session")
def udip_home(tmp_path_factory):
    """A fresh UDIP_HOME for the whole session (restored afterwards)."""
    home = tmp_path_factory.mktemp("udip_home")
    old = os.environ.get("UDIP_HOME")
    os.environ["UDIP_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("UDIP_HOME", None)
    else:
        os.environ["UDIP_HOME"] = old


@pytest.fixture(scope="session")
def tiny_cohort(udip_home):
    """The tiny cohort, generated once per session under the session's UDIP_HOME."""
    from udip_assets.cohort.synth_build import generate_cohort

    return generate_cohort(tiny_config(), udip_home / "cohorts" / "tiny", progress=False)


@pytest.fixture(scope="session")
def ingested(tiny_cohort, udip_home):
    """The tiny cohort ingested through the real Dagster graph: (spec, warehouse path, instance, result)."""
    import dagster as dg

    from udip_assets.defs.run import materialize_cohort

    instance = dg.DagsterInstance.ephemeral()
    result = materialize_cohort("tiny", selection="group:ingest", instance=instance)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return tiny_cohort, udip_home / "warehouse.duckdb", instance, result


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster (munged + slurmctld + slurmd) for the session; SLURM_CONF points at it."""
    from udip_assets_tests.slurm_cluster import missing_daemons, start_cluster

    missing = missing_daemons()
    if missing:
        pytest.skip(f"{', '.join(missing)} is not on PATH (Debian: slurm-wlm and munge; `make test-tools`)")
    cluster = start_cluster(tmp_path_factory.mktemp("slurm"))
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
