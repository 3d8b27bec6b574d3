"""The Dagster UI in a real browser: a new cohort folder flows down to its loci by automation alone.

Set-up: a home of its own holding one tiny cohort, materialized by ``udip materialize``'s code path
(runs launched through the instance); then the real webserver and daemon (``dagster dev``) on a
free port. The test drops a second cohort folder in and waits until the sensor and the
declarative automation have materialized its ``genomic_risk_loci`` (no run config: the cohort's
``defaults`` keep the model small). Debian's chromium, driven by Playwright, then opens the asset
graph and an asset page and checks that its row count and its inline Manhattan plot are shown.
Screenshots are kept under ``$UDIP_TEST_ARTIFACTS`` (default ``.udip-test-artifacts/``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from udip_assets.cohort.synthetic import PlantedEffect
from udip_assets_tests.conftest import tiny_config

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (apt-get install chromium)"),
              pytest.mark.timeout(1200)]
ARTIFACTS = Path(os.environ.get("UDIP_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / ".udip-test-artifacts"))
# small enough to train in seconds, large enough for the GWAS; read by the assets from cohort.yaml
DEFAULTS = {
    "subjects": {"train_count": 30, "val_count": 10},
    "vit_ae_model": {"preset": "demo", "enc_dim": 32, "enc_heads": 4, "enc_depth": 2, "dec_dim": 16, "dec_heads": 2,
                     "dec_depth": 1, "epochs": 2, "checkpoint_every": 2, "batch_size": 4, "device": "cpu"},
    "checkpoint_loci_sweep": {"every_epochs": 2, "device": "cpu"},
    "udip_embeddings": {"device": "cpu"},
    "perdi_maps": {"n_subjects": 20, "device": "cpu"},
    "attention_maps": {"n_subjects": 2, "device": "cpu"},
    "saliency_maps": {"n_samples": 2, "n_subjects": 1, "device": "cpu"},
}


def _cohort(home: Path, name: str, seed: int) -> Path:
    from udip_assets.cohort.synth_build import generate_cohort

    cfg = replace(tiny_config(name=name, seed=seed, with_faults=False, n_subjects=160),
                  effects=(PlantedEffect("ventricles", variance_explained=0.45),))
    staging = home / "staging" / name  # generated outside cohorts/, then moved in whole
    generate_cohort(cfg, staging, progress=False)
    yml = staging / "cohort.yaml"
    raw = yaml.safe_load(yml.read_text())
    raw["defaults"] = DEFAULTS
    yml.write_text(yaml.safe_dump(raw, sort_keys=False))
    return staging


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"{url} did not answer within {timeout_s:.0f} s")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    """(home, url, instance, process) with one cohort materialized and ``dagster dev`` running."""
    import dagster as dg

    from udip_assets.defs.run import ensure_dagster_home, materialize_cohort

    home = tmp_path_factory.mktemp("ui_home")
    old = {k: os.environ.get(k) for k in ("UDIP_HOME", "DAGSTER_HOME")}
    os.environ["UDIP_HOME"] = str(home)
    dagster_home = ensure_dagster_home(home / "dagster")
    shutil.move(_cohort(home, "ui_first", seed=21), home / "cohorts" / "ui_first")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        result = materialize_cohort("ui_first", instance=instance)
        assert result.success, result.failures()
    port = _free_port()
    log = open(home / "dagster_dev.log", "w")
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster")), "dev", "-h", "127.0.0.1", "-p", str(port),
         "-w", str(Path(__file__).resolve().parents[1] / "workspace.yaml")],
        env={**os.environ, "UDIP_HOME": str(home), "DAGSTER_HOME": str(dagster_home)},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/server_info", 180)
        yield home, f"http://127.0.0.1:{port}", dagster_home, process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
        log.close()
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(home / "dagster_dev.log", ARTIFACTS / "dagster_dev.log")
        for key, value in old.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


def _latest(instance, asset: str, partition: str):
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset), asset_partitions=[partition]), limit=1).records
    return records[0] if records else None


def test_a_dropped_cohort_is_automated_down_to_loci_and_the_ui_shows_it(ui):
    import dagster as dg
    from playwright.sync_api import sync_playwright

    home, url, dagster_home, process = ui
    shutil.move(_cohort(home, "ui_second", seed=22), home / "cohorts" / "ui_second")
    deadline = time.monotonic() + 900
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        while any(_latest(instance, asset, "ui_second") is None for asset in ("genomic_risk_loci", "perdi_regions")):
            assert process.poll() is None, "dagster dev exited; see .udip-test-artifacts/dagster_dev.log"
            failed = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]))
            assert not failed, f"automation run {failed[0].dagster_run.run_id} failed; see its logs in the UI"
            assert time.monotonic() < deadline, "automation did not reach the loci and PerDI within 15 minutes"
            time.sleep(5)
        for asset in ("minp_sumstats", "perdi_maps", "subjects", "loci_annotated"):
            assert _latest(instance, asset, "ui_second") is not None, asset
        runs = instance.get_run_records(dg.RunsFilter(tags={"dagster/partition": "ui_second"}))
        assert runs and all(r.dagster_run.remote_job_origin is not None for r in runs)
    from udip_assets.store.warehouse import read_frame

    n_snps = int(read_frame(home / "warehouse.duckdb", "SELECT count(*) AS n FROM minp WHERE cohort = 'ui_second'")
                 ["n"].item())
    assert n_snps > 1000

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run"]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        page.goto(f"{url}/asset-groups", wait_until="networkidle")
        page.goto(f"{url}/locations/udip/asset-groups/gwas/lineage", wait_until="networkidle")
        page.wait_for_selector("text=minp_sumstats", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "asset_graph.png"), full_page=True)

        page.goto(f"{url}/assets/minp_sumstats?partition=ui_second", wait_until="networkidle")
        page.wait_for_selector("text=Row count", timeout=60_000)
        shown = page.get_by_text("Row count", exact=True).locator("xpath=..").inner_text()
        assert shown.replace(",", "").split()[-1] == str(n_snps), shown  # the warehouse's rows of this partition
        page.screenshot(path=str(ARTIFACTS / "minp_sumstats.png"), full_page=True)
        page.get_by_text("Show Markdown").first.click()  # the Manhattan plot, inline in the metadata
        image = page.locator("img[src^='data:image/png;base64,']").first
        image.wait_for(state="visible", timeout=60_000)
        box = image.bounding_box()
        assert box is not None and box["width"] > 200 and box["height"] > 100
        page.screenshot(path=str(ARTIFACTS / "minp_sumstats_manhattan.png"))
        browser.close()


def test_the_run_records_of_both_cohorts_name_no_subject(ui):
    """Dagster's event log, run storage and compute logs and the MLflow store of the launched and automated
    runs (training included) hold no eid of either cohort: counts and reasons only."""
    from udip_assets_tests.privacy_scan import cohort_ids, find_ids

    home, _, dagster_home, _ = ui
    ids = cohort_ids(home / "cohorts" / "ui_first") | cohort_ids(home / "cohorts" / "ui_second")
    assert len(ids) >= 300 and (home / "mlflow.db").exists()
    mlflow_artifacts = home / "artifacts" / "mlflow"
    assert mlflow_artifacts.is_dir()
    found = find_ids([dagster_home, home / "mlflow.db", mlflow_artifacts], ids)
    assert not found, found[:3]
