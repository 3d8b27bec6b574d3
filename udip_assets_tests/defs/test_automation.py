"""Declarative automation and the new-cohort sensor, evaluated by Dagster itself (no daemon).

The automation test walks one cohort through the graph tick by tick: each asset partition the
conditions request is reported as materialized, until nothing more is requested. It checks what
follows what, not the assets' computations (the end-to-end test runs those).
"""

from __future__ import annotations

import os
import shutil

import dagster as dg
import pytest
import yaml

from udip_assets.cohort.spec import COHORT_FILE

pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning", "ignore::dagster.PreviewWarning")


def _defs():
    from udip_assets.definitions import defs

    return defs


def _report(instance: dg.DagsterInstance, requested: dict[dg.AssetKey, set[str]]) -> None:
    """Each requested partition materialized, then its checks (the dbt tests among them) passed on
    that materialization, in one real run per tick (ops that log the events), as a run of those
    assets would."""
    from dagster._core.definitions.asset_checks.asset_check_evaluation import (
        AssetCheckEvaluationTargetMaterializationData,
    )

    graph = _defs().resolve_asset_graph()
    todo = [(key, partition) for key, partitions in requested.items() for partition in sorted(partitions)]

    @dg.op
    def materialize(context):
        for key, partition in todo:
            context.log_event(dg.AssetMaterialization(asset_key=key, partition=partition))

    @dg.op(ins={"after": dg.In(dg.Nothing)})
    def check(context):
        for key, partition in todo:
            record = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1).records[0]
            target = AssetCheckEvaluationTargetMaterializationData(
                storage_id=record.storage_id, run_id=record.run_id, timestamp=record.timestamp)
            for spec in graph.get_check_keys_for_assets({key}):
                context.log_event(dg.AssetCheckEvaluation(asset_key=key, check_name=spec.name, passed=True,
                                                          partition=partition, target_materialization_data=target))

    @dg.job
    def reported():
        check(after=materialize())

    assert reported.execute_in_process(instance=instance).success


def _tick(defs, instance, cursor):
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    graph = defs.resolve_asset_graph()
    requested = {key: set(result.get_requested_partitions(key)) for key in graph.get_all_asset_keys()
                 if graph.get(key).is_materializable and result.get_num_requested(key)}
    return result.cursor, requested


def _run_until_quiet(defs, instance, cursor, max_ticks: int = 30):
    """Report every request as materialized until a tick requests nothing; the requests in order."""
    history = []
    for _ in range(max_ticks):
        cursor, requested = _tick(defs, instance, cursor)
        if not requested:
            return cursor, history
        history.append(requested)
        _report(instance, requested)
    raise AssertionError(f"automation did not settle in {max_ticks} ticks: last {history[-1]}")


def _names(history) -> list[str]:
    return [k.to_user_string() for tick in history for k in tick]


def test_a_new_cohort_flows_down_to_loci_and_interpretation_and_new_scans_re_run_without_retraining():
    defs = _defs()
    instance = dg.DagsterInstance.ephemeral()
    cursor, history = _run_until_quiet(defs, instance, None)  # empty instance: no partition, nothing to do
    assert history == []
    instance.add_dynamic_partitions("cohort", ["c1"])
    instance.add_dynamic_partitions("chrom", ["6", "11"])
    cursor, history = _run_until_quiet(defs, instance, cursor)
    assert "scan_manifest" not in _names(history)  # the sensor starts ingest, not automation
    assert "vit_ae_model" not in _names(history)  # waits for its parents

    # the sensor's ingest run
    _report(instance, {dg.AssetKey("scan_manifest"): {"c1"}})
    cursor, history = _run_until_quiet(defs, instance, cursor)
    names = _names(history)
    for asset in ("subjects", "preprocessed_scans", "vit_ae_model", "checkpoint_loci_sweep", "udip_embeddings",
                  "gwas_sumstats", "minp_sumstats", "multivariate_sumstats", "genomic_risk_loci", "loci_annotated",
                  "novel_loci", "perdi_maps", "perdi_regions", "attention_maps", "saliency_maps"):
        assert asset in names, f"{asset} was never requested: {names}"
    tick_of = {}  # the first tick requesting each asset: a parent is never requested after its child
    for i, tick in enumerate(history):
        for key in tick:
            tick_of.setdefault(key.to_user_string(), i)
    order = ["subjects", "vit_ae_model", "udip_embeddings", "gwas_sumstats", "minp_sumstats", "perdi_maps",
             "perdi_regions"]
    assert [tick_of[a] for a in order] == sorted(tick_of[a] for a in order), tick_of
    assert tick_of["gwas_sumstats"] > tick_of["udip_embeddings"]  # a new partitions definition: a new run
    gwas = set().union(*(tick.get(dg.AssetKey("gwas_sumstats"), set()) for tick in history))
    assert gwas == {"6|c1", "11|c1"}
    assert names.count("vit_ae_model") == 1

    # new scans: the cohort is ingested again; the UDIPs and all after them re-run, training does not
    _report(instance, {dg.AssetKey("scan_manifest"): {"c1"}})
    cursor, history = _run_until_quiet(defs, instance, cursor)
    names = _names(history)
    assert "vit_ae_model" not in names and "checkpoint_loci_sweep" not in names
    for asset in ("preprocessed_scans", "udip_embeddings", "gwas_sumstats", "genomic_risk_loci", "perdi_maps"):
        assert asset in names, f"{asset} did not re-run after new scans: {names}"

    # a new model (trained by hand) re-runs what depends on it
    _report(instance, {dg.AssetKey("vit_ae_model"): {"c1"}})
    cursor, history = _run_until_quiet(defs, instance, cursor)
    assert {"checkpoint_loci_sweep", "udip_embeddings", "genomic_risk_loci"} <= set(_names(history)) - {"vit_ae_model"}


@pytest.fixture
def sensor_home(ingested, udip_home):
    """The session home with the ingested tiny cohort; cohorts added by a test are removed after it."""
    before = set((udip_home / "cohorts").iterdir())
    yield udip_home
    for extra in set((udip_home / "cohorts").iterdir()) - before:
        shutil.rmtree(extra)


def _sensor(instance, home):
    from udip_assets.defs.resources import UdipHome
    from udip_assets.defs.sensors import new_cohort_sensor

    context = dg.build_sensor_context(instance=instance, resources={"home": UdipHome(home=str(home))})
    return new_cohort_sensor(context)


def test_sensor_skips_an_ingested_cohort_and_re_ingests_one_whose_files_changed(ingested, sensor_home):
    spec, _, instance, _ = ingested
    result = _sensor(instance, sensor_home)
    assert not result.run_requests
    assert "no new or changed cohort" in result.skip_reason.skip_message
    st = os.stat(spec.covariates)
    try:
        os.utime(spec.covariates, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
        result = _sensor(instance, sensor_home)
        assert [(r.partition_key, r.tags["udip/trigger"]) for r in result.run_requests] == \
            [("tiny", "cohort files changed")]
    finally:
        os.utime(spec.covariates, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_sensor_adds_a_new_cohort_with_its_chromosomes_and_refuses_an_invalid_one(ingested, sensor_home):
    spec, _, instance, _ = ingested
    new = sensor_home / "cohorts" / "tiny_copy"
    new.mkdir()
    raw = yaml.safe_load((spec.root / COHORT_FILE).read_text())
    raw["name"] = "tiny_copy"
    for key, value in list(raw.items()):  # point at the tiny cohort's files
        if key in ("covariates", "relatedness", "genes", "truth", "reference_loci", "gwas_catalog"):
            raw[key] = str(spec.root / value)
    raw["scans"] = {"dir": str(spec.scans_dir)}
    raw["genotypes"] = {"plink": str(spec.genotypes)}
    (new / COHORT_FILE).write_text(yaml.safe_dump(raw))
    bad = sensor_home / "cohorts" / "broken"
    bad.mkdir()
    (bad / COHORT_FILE).write_text("name: broken\nresolution_mm: 3\nscans: {dir: scans}\ncovariates: c.csv\n")

    result = _sensor(instance, sensor_home)
    assert [(r.partition_key, r.tags["udip/trigger"]) for r in result.run_requests] == [("tiny_copy", "new cohort")]
    assert instance.has_dynamic_partition("cohort", "tiny_copy")
    assert not instance.has_dynamic_partition("cohort", "broken")
    assert {"6", "11"} <= set(instance.get_dynamic_partitions("chrom"))
    shutil.rmtree(new)
    result = _sensor(instance, sensor_home)
    assert not result.run_requests
    for expected in ("broken/cohort.yaml", "genotypes", "resolution_mm", "expected 1 (UK Biobank", "found 3",
                     "scans.dir", "covariates"):
        assert expected in result.skip_reason.skip_message, (expected, result.skip_reason)
