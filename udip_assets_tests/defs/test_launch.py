"""Runs launched through a persistent instance: ordinary runs of the code location, re-executable.

``udip materialize`` launches its stages this way; here the tiny cohort's ingest, on an on-disk
instance of its own, then a re-execution of that run the way the UI's "Re-execute" button makes one.
"""

from __future__ import annotations

import dagster as dg
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::dagster.BetaWarning", "ignore::dagster.PreviewWarning")


def test_materialize_launches_ordinary_runs_that_can_be_re_executed(ingested, tmp_path):
    from dagster._core.definitions.selector import JobSubsetSelector
    from dagster._core.execution.plan.resume_retry import ReexecutionStrategy

    from udip_assets.defs.launch import ASSET_JOB, LOCATION, code_location, wait_for_run
    from udip_assets.defs.run import materialize_cohort

    seen: list[tuple[str, str]] = []
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        assert not instance.is_ephemeral
        result = materialize_cohort(
            "tiny", selection="group:ingest", instance=instance,
            on_event=lambda stage, e: seen.append((stage, e.dagster_event.event_type_value if e.dagster_event else "")))
        assert result.success, result.failures()
        ((label, key, launched),) = result.runs
        run = instance.get_run_by_id(launched.run_id)
        assert run.job_name == ASSET_JOB and run.remote_job_origin is not None
        assert run.remote_job_origin.repository_origin.code_location_origin.location_name == LOCATION
        assert run.tags["dagster/partition"] == "tiny" and run.tags["udip/stage"] == label
        assert {k.to_user_string() for k in run.asset_selection} == {"scan_manifest", "subjects", "preprocessed_scans"}
        assert ("ingest", "STEP_START") in {(s.split(" ")[0], kind) for s, kind in seen}
        checks = {c.check_name: c.passed for c in launched.get_asset_check_evaluations()}
        assert checks == {"most_scans_usable": True, "kept_subjects_unrelated": True,
                          "no_subject_in_two_splits": True, "caches_are_zscored": True}

        with code_location(instance) as process:  # what the UI's Re-execute does
            context = process.create_request_context()
            location = context.get_code_location(LOCATION)
            (repo,) = location.get_repositories().values()
            job = location.get_job(JobSubsetSelector(location_name=LOCATION, repository_name=repo.name,
                                                     job_name=ASSET_JOB, op_selection=None,
                                                     asset_selection=run.asset_selection,
                                                     asset_check_selection=run.asset_check_selection))
            again = instance.create_reexecuted_run(request_context=context, parent_run=run, code_location=location,
                                                   remote_job=job, strategy=ReexecutionStrategy.ALL_STEPS,
                                                   use_parent_run_tags=True)
            instance.launch_run(again.run_id, context)
            finished = wait_for_run(instance, again.run_id)
        errors = [e.dagster_event.event_specific_data.error.to_string()
                  if e.dagster_event and e.dagster_event.is_step_failure else e.message
                  for e in instance.all_logs(again.run_id) if e.level >= 40][:1]
        assert finished.status == dg.DagsterRunStatus.SUCCESS, errors
        assert finished.parent_run_id == run.run_id
        assert finished.tags["dagster/partition"] == "tiny"


def test_a_selection_that_cuts_a_multi_asset_takes_it_whole():
    """genomic_risk_loci is written with lead_snps and ind_sig_snps by one op: selecting it (or what leads
    to PerDI) selects them too, instead of failing to build the job."""
    import dagster as dg

    from udip_assets.definitions import defs
    from udip_assets.defs.run import plan_stages

    for selection in ("key:genomic_risk_loci", "+key:perdi_maps"):
        keys = set().union(*(stage.keys for stage in plan_stages(defs, selection)))
        assert {dg.AssetKey("lead_snps"), dg.AssetKey("ind_sig_snps")} <= keys, selection
    assert dg.AssetKey("saliency_maps") not in keys
