"""The whole pipeline on a small synthetic cohort, through real Dagster runs, DuckDB, MLflow and dbt.

ingest -> train (a narrow 2-epoch model) -> loci sweep over its checkpoints -> UDIPs -> GWAS per
chromosome -> minP -> FUMA loci -> annotations -> dbt build (its tests run as asset checks).
The model is tiny (two layers, 32 dims, four epochs), yet two strong planted loci (ventricle and
cerebellum volume, 45 % of each one's variation) are visible in the images of ~270 GWAS subjects: the
loci must find at least one of them and nothing else.
The demo's full recall is measured by ``make demo``. Every table, file and tracking record must exist
and agree with each other.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from udip_assets.cohort.synthetic import PlantedEffect
from udip_assets.store.schema import UDIP_COLUMNS
from udip_assets.store.warehouse import read_frame
from udip_assets_tests.conftest import tiny_config

# ModelAssetConfig's typed fields (what the launchpad shows); overrides_json reaches the others
MODEL = {"enc_dim": 32, "enc_heads": 4, "enc_depth": 2, "dec_dim": 16, "dec_heads": 2, "dec_depth": 1,
         "epochs": 4, "checkpoint_every": 2, "batch_size": 4, "overrides_json": json.dumps({"mlp_ratio": 4.0})}
RUN_CONFIG = {"ops": {
    "subjects": {"config": {"train_count": 30, "val_count": 10}},
    "vit_ae_model": {"config": {"preset": "demo", **MODEL, "device": "cpu"}},
    "checkpoint_loci_sweep": {"config": {"every_epochs": 2, "device": "cpu", "patience_epochs": 2}},
    "udip_embeddings": {"config": {"device": "cpu"}},
    "perdi_maps": {"config": {"n_subjects": 60, "device": "cpu"}},
    "attention_maps": {"config": {"n_subjects": 4, "device": "cpu"}},
    "saliency_maps": {"config": {"n_samples": 4, "device": "cpu"}},
}}


@pytest.fixture(scope="module")
def pipeline(udip_home):
    import dagster as dg

    from udip_assets.cohort.synth_build import generate_cohort
    from udip_assets.defs.run import materialize_cohort

    cfg = replace(tiny_config(name="e2e", seed=5, with_faults=False, n_subjects=400),
                  effects=(PlantedEffect("ventricles", variance_explained=0.45),
                           PlantedEffect("cerebellum", variance_explained=0.45)))
    generate_cohort(cfg, udip_home / "cohorts" / "e2e", progress=False)
    instance = dg.DagsterInstance.ephemeral()
    result = materialize_cohort("e2e", run_config=RUN_CONFIG, instance=instance)
    assert result.success, result.failures()
    return udip_home / "warehouse.duckdb", instance, result


def _one(db: Path, sql: str):
    return read_frame(db, sql).iloc[0, 0]


def test_stages_ran_in_order(pipeline):
    _, _, result = pipeline
    stages = [stage for stage, _, _ in result.runs]
    # cut from the graph: up to the UDIPs, the GWAS per chromosome (6 and 11), then what follows it
    assert stages == ["ingest + interpret + loci + model", "gwas", "gwas", "annotations + gwas + interpret + loci"]


def test_training_tables_and_selection(pipeline):
    db, _, _ = pipeline
    epochs = read_frame(db, "SELECT * FROM training_epochs WHERE cohort = 'e2e' ORDER BY epoch")
    assert epochs["epoch"].tolist() == [1, 2, 3, 4] and epochs["val_loss"].notna().all()
    ck = read_frame(db, "SELECT * FROM checkpoints WHERE cohort = 'e2e' ORDER BY epoch")
    assert {2, 4} <= set(ck["epoch"]) and (ck["n_dims"] == 32).all()  # + the best epoch's weights
    swept = read_frame(db, "SELECT * FROM model_selection WHERE cohort = 'e2e' ORDER BY epoch")
    assert swept["epoch"].tolist() == [2, 4] and set(swept["model_id"]) <= set(ck["model_id"])
    assert swept["selected"].sum() == 1
    chosen = swept.loc[swept["selected"], "model_id"].item()
    assert _one(db, "SELECT DISTINCT model_id FROM udips WHERE cohort = 'e2e' AND split = 'inference' "
                    f"AND model_id = '{chosen}'") == chosen


def test_udips_and_gwas_agree(pipeline):
    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    udips = read_frame(db, f"SELECT * FROM udips WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    n_inference = _one(db, "SELECT count(*) FROM preprocessed_scans WHERE cohort = 'e2e' AND split = 'inference'")
    assert len(udips) == n_inference and udips[list(UDIP_COLUMNS[:32])].notna().all().all()
    assert udips["recon_loss"].gt(0).all()
    n_snps = _one(db, f"SELECT count(*) FROM minp WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert n_snps > 1000
    per_chrom = read_frame(db, "SELECT chrom, count(DISTINCT snp) AS n FROM gwas_sumstats "
                               f"WHERE cohort = 'e2e' AND model_id = '{model_id}' GROUP BY 1")
    assert per_chrom["n"].sum() == n_snps
    n_dims = _one(db, f"SELECT count(DISTINCT dim) FROM gwas_sumstats WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert n_dims == 32


def test_genome_wide_lambda_gc_is_the_median_chi2_of_every_test(pipeline, udip_home):
    """minp_sumstats sums the chromosomes' |t| histograms; the reference reads every p-value."""
    from scipy import stats

    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    med = read_frame(db, "SELECT dim, median(p) AS p FROM gwas_sumstats "
                         f"WHERE cohort = 'e2e' AND model_id = '{model_id}' GROUP BY dim ORDER BY dim")
    expected = stats.chi2.isf(med["p"].to_numpy(), 1) / stats.chi2.ppf(0.5, 1)
    saved = json.loads((udip_home / "artifacts" / "gwas_reports" / "e2e" / model_id / "lambda_gc.json").read_text())
    np.testing.assert_allclose(saved["lambda_gc"], expected, rtol=2e-3)


def test_loci_are_found_and_are_the_planted_ones(pipeline, udip_home):
    """Both methods' loci: the planted ventricle SNP is inside a locus, and every locus is near it."""
    from udip_assets.cohort.truth_check import load_truth, score_loci

    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    truth = load_truth(udip_home / "cohorts" / "e2e" / "truth.json")
    loci = read_frame(db, f"SELECT * FROM genomic_risk_loci WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert set(loci["method"]) <= {"minp", "multivariate"}
    scores = {m: score_loci(loci[loci["method"] == m], truth) for m in ("minp", "multivariate")}
    assert max(s.n_found_any for s in scores.values()) >= 1, {m: s.n_loci for m, s in scores.items()}
    for method, score in scores.items():
        assert score.n_true_loci == score.n_loci, (method, loci)
    joint = read_frame(db, f"SELECT * FROM multivariate WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert len(joint) == _one(db, f"SELECT count(*) FROM minp WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert (joint["df1"] <= 32).all() and joint["p"].between(0, 1).all()
    # the LD of the loci is computed over exactly the subjects the GWAS tested
    samples = (udip_home / "artifacts" / "gwas" / "cohort=e2e" / f"model_id={model_id}" / "samples.txt").read_text()
    assert len(samples.split()) == joint["n"].max() == _one(
        db, f"SELECT count(*) FROM udips WHERE cohort = 'e2e' AND model_id = '{model_id}' AND split = 'inference'")
    spectrum = read_frame(db, f"SELECT * FROM udip_spectrum WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert len(spectrum) == 1 and spectrum["n_dims"].item() == 32
    assert 1 <= spectrum["participation_ratio"].item() <= 32
    assert 1 <= spectrum["n_pcs_90"].item() <= spectrum["n_pcs_99"].item() <= 32
    # the decoder spread: recomputed here from the first GWAS-set scans, the model's own predictions (not
    # masked with each scan's brain) and the padded template brain, centring over subjects explicitly
    import torch

    from udip_assets.cohort.spec import load_cohort
    from udip_assets.imaging.anatomy import load_anatomy
    from udip_assets.imaging.preprocess import load_preprocessed, pad_to_patch_multiple
    from udip_assets.model.checkpoint import load_checkpoint

    n = spectrum["decoder_n_subjects"].item()
    paths = read_frame(db, "SELECT cache_path FROM preprocessed_scans WHERE cohort = 'e2e' AND status = 'ok' AND "
                           f"split = 'inference' ORDER BY subject_id LIMIT {n}")["cache_path"]
    assert n == min(32, len(read_frame(db, "SELECT 1 FROM preprocessed_scans WHERE cohort = 'e2e' AND "
                                           "status = 'ok' AND split = 'inference'")))
    net = load_checkpoint(_one(db, f"SELECT path FROM checkpoints WHERE model_id = '{model_id}'"), device="cpu").model
    net.eval()
    x = np.stack([np.asarray(load_preprocessed(p), dtype=np.float32) for p in paths])  # (n, X, Y, Z)
    with torch.no_grad():
        r = np.concatenate([net.reconstruct(torch.from_numpy(v)[None, None], mask_background=False).numpy()[:, 0]
                            for v in x])
    brain = pad_to_patch_multiple(load_anatomy(load_cohort(udip_home / "cohorts" / "e2e").grid).brain_mask,
                                  net.cfg.patch)
    xv, rv = x[:, brain].astype(np.float64), r[:, brain].astype(np.float64)
    dx, dr = xv - xv.mean(0), rv - rv.mean(0)
    np.testing.assert_allclose(spectrum["input_between_variance"].item(), xv.var(0).mean(), rtol=1e-6)
    np.testing.assert_allclose(spectrum["recon_between_variance"].item(), rv.var(0).mean(), rtol=1e-5)
    np.testing.assert_allclose(spectrum["deviation_r2"].item(), 1 - ((dx - dr) ** 2).sum() / (dx**2).sum(),
                               rtol=1e-5)


def test_a_32_dim_model_is_thresholded_at_5e_8_over_32(pipeline):
    """The number of dims comes from the model: minP significance, its loci and the sweep use 5e-8 / 32."""
    import dagster as dg

    db, instance, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    minp = read_frame(db, f"SELECT p, significant FROM minp WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert (minp["significant"] == (minp["p"] <= 5e-8 / 32)).all()
    meta = instance.get_latest_materialization_event(dg.AssetKey("minp_sumstats")).asset_materialization.metadata
    assert meta["sig_p"].value == pytest.approx(5e-8 / 32) and meta["n_dims"].value == 32
    loci_meta = instance.get_latest_materialization_event(dg.AssetKey("genomic_risk_loci")).asset_materialization
    assert loci_meta.metadata["n_dims"].value == 32
    n_sig = read_frame(db, f"SELECT n_significant_snps FROM model_selection WHERE model_id = '{model_id}'").iloc[0, 0]
    assert n_sig == int((minp["p"] <= 5e-8 / 32).sum())  # the sweep counted on the same UDIPs, same rule


def test_loci_files_and_dbt_models(pipeline, udip_home):
    db, instance, result = pipeline
    assert list(udip_home.glob("artifacts/loci/e2e/*/GenomicRiskLoci.txt"))
    n_loci = _one(db, "SELECT count(*) FROM genomic_risk_loci WHERE cohort = 'e2e'")
    assert _one(db, "SELECT count(*) FROM loci_annotated WHERE cohort = 'e2e'") == n_loci
    assert _one(db, "SELECT count(*) FROM genes WHERE cohort = 'e2e'") > 0
    checks = [e for e in result.get_asset_check_evaluations() if "novel_loci" in str(e.asset_key)]
    assert checks and all(e.passed for e in checks)


def test_mlflow_store_holds_the_run(pipeline, udip_home):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{udip_home / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("udip").experiment_id],
                              filter_string="tags.cohort = 'e2e'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["model.enc_dim"] == "32" and run.data.tags["preset"] == "demo"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == [1, 2, 3, 4]
    assert len(client.get_metric_history(run.info.run_id, "n_loci")) == 2
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "reconstruction.png" in names and "checkpoints" in names
    assert not any(re.fullmatch(r"\d{7}", str(v)) for v in run.data.params.values())  # no eids


def test_readme_queries_run(pipeline):
    from click.testing import CliRunner

    from udip_assets.cli import main

    db, _, _ = pipeline
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Example queries", 1)[1].split("\n## ", 1)[0]
    queries = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    assert len(queries) == 3
    for query in queries:
        out = CliRunner().invoke(main, ["sql", "--csv", "--db", str(db), query])
        assert out.exit_code == 0, (query, out.output)
        assert out.output.splitlines()[0].count(",") >= 3  # a header with the query's columns


def test_truth_scores_the_loci_and_runs_the_control_on_the_gwas_subjects(pipeline):
    from click.testing import CliRunner

    from udip_assets.cli import main

    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    n_gwas = _one(db, f"SELECT count(*) FROM udips WHERE cohort = 'e2e' AND model_id = '{model_id}' "
                      "AND split = 'inference'")
    out = CliRunner().invoke(main, ["truth", "--cohort", "e2e", "--control"])
    assert out.exit_code == 0, out.output
    assert f"model {model_id}: GWAS of {n_gwas} subjects x 32 UDIP dims" in out.output
    assert re.search(r"^minp: recall \d+/\d+ detectable planted loci", out.output, flags=re.M)
    assert re.search(r"^planted-region hit rate: \d+/\d+", out.output, flags=re.M)
    assert re.search(r"^decoder: its predictions reproduce -?\d+\.\d% of \d+ GWAS-set subjects' departures",
                     out.output, flags=re.M)
    assert re.search(r"^multivariate: recall \d+/\d+ detectable planted loci", out.output, flags=re.M)
    assert re.search(r"^vol_ventricles\s+\d+\s+-?\d\.\d\d\s+udip_\d{3}", out.output, flags=re.M)
    assert "UDIP effective rank: participation ratio" in out.output
    # the control tests the image-measured phenotype of exactly the UDIP GWAS subjects and finds the locus
    assert re.search(rf"control \(the planted phenotypes measured in the images of the same {n_gwas} subjects, "
                     r"2 phenotypes.*recall 2/2", out.output)


def test_truth_ceiling_scores_the_voxels_and_a_linear_code_of_the_udips_width(pipeline):
    """``udip truth --ceiling`` on the GWAS subjects' own scans: the UDIPs' R2 as in the encoding table, a
    PCA code as wide as the model and a ridge on the voxels; the strong planted volumes are in the image."""
    from click.testing import CliRunner

    from udip_assets.cli import main

    out = CliRunner().invoke(main, ["truth", "--cohort", "e2e", "--ceiling"])
    assert out.exit_code == 0, out.output
    encoded = re.search(r"^vol_ventricles\s+\d+\s+(-?\d\.\d\d)\s+udip_\d{3}", out.output, flags=re.M).group(1)
    assert re.search(r"^  target\s+UDIPs\s+PCA-32\s+voxels$", out.output, flags=re.M)
    row = re.search(r"^  vol_ventricles\s+(-?\d\.\d\d)\s+(-?\d\.\d\d)\s+(-?\d\.\d\d)$", out.output, flags=re.M)
    assert row and row.group(1) == encoded
    assert float(row.group(3)) > 0.8  # 45 % of the ventricles' variation is planted and visible
    assert re.search(r"^PCA-32 code, same GWAS and clumping, minp: recall \d+/\d+", out.output, flags=re.M)
    assert re.search(r"^PCA-32 code, same GWAS and clumping, multivariate: recall \d+/\d+", out.output, flags=re.M)


def test_interpretation_maps_tables_and_figures(pipeline, udip_home):
    """PerDI maps on the cohort grid (affine and shape of the scans), ranked atlas regions per dim,
    spotlight tokens, W_K^T W_Q spectra and SmoothGrad maps, all of the selected model."""
    import nibabel as nib

    from udip_assets.cohort.spec import load_cohort

    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    grid = load_cohort(udip_home / "cohorts" / "e2e").grid
    dims = read_frame(db, f"SELECT * FROM perdi_dims WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert len(dims) >= 5 and dims["dim"].between(0, 31).all() and (dims["n_subjects"] == 60).all()
    for row in dims.itertuples():
        img = nib.load(row.nifti_path)
        assert img.shape == grid.shape and np.allclose(img.affine, grid.affine)
        assert Path(row.png_path).stat().st_size > 1000 and -1 <= row.symmetry <= 1
    regions = read_frame(db, f"SELECT * FROM perdi_regions WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert set(regions["dim"]) == set(dims["dim"])
    assert (regions.groupby("dim")["rank"].min() == 1).all() and "Ventricles" in set(regions["region"])
    spot = read_frame(db, f"SELECT * FROM attention_spotlight WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert set(spot["layer"]) == {0, 1} and spot["is_spotlight"].any() and spot["attention_in"].between(0, 1).all()
    qk = read_frame(db, f"SELECT * FROM qk_spectrum WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert len(qk) == 2 * 4 * 8  # layers x heads x head_dim (32 / 4)
    saliency = sorted((udip_home / "artifacts" / "saliency" / "e2e" / model_id).glob("smoothgrad_*.nii.gz"))
    assert len(saliency) == 2 and nib.load(saliency[0]).shape == grid.shape
    from click.testing import CliRunner

    from udip_assets.cli import main

    first = int(dims["dim"].iloc[0])
    out = CliRunner().invoke(main, ["perdi", "--cohort", "e2e", "--dims", str(first), "--top", "3"])
    assert out.exit_code == 0, out.output
    top = regions[regions["dim"] == first].nsmallest(1, "rank")["region"].item()
    assert f"dim {first}: symmetry" in out.output and top in out.output


def test_metadata_shows_row_counts_schemas_figures_and_a_loci_preview(pipeline):
    import dagster as dg

    db, instance, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")

    def meta(asset):
        return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata

    loci = meta("genomic_risk_loci")
    n_loci = _one(db, f"SELECT count(*) FROM genomic_risk_loci WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    assert loci["dagster/row_count"].value == n_loci > 0
    columns = {c.name for c in loci["dagster/column_schema"].schema.columns}
    assert {"cohort", "model_id", "GenomicLocus", "method"} <= columns
    assert "rs" in loci["preview"].value and "| method" in loci["preview"].value
    n_scans = _one(db, "SELECT count(*) FROM scans WHERE cohort = 'e2e'")
    assert meta("scan_manifest")["dagster/row_count"].value == n_scans
    for asset, key in (("minp_sumstats", "manhattan"), ("minp_sumstats", "qq"), ("perdi_maps", "preview"),
                       ("reconstruction_qc", "udip_violins"), ("vit_ae_model", "reconstruction")):
        assert meta(asset)[key].value.startswith("![") and "data:image/png;base64," in meta(asset)[key].value
    assert meta("vit_ae_model")["mlflow_run"].value.startswith("http://127.0.0.1:5000/#/experiments/")


def test_udip_loci_prints_the_annotated_loci(pipeline):
    from click.testing import CliRunner

    from udip_assets.cli import main

    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    annotated = read_frame(db, f"SELECT method, top_snp, nearest_gene FROM loci_annotated WHERE cohort = 'e2e' "
                               f"AND model_id = '{model_id}'")
    method = annotated["method"].value_counts().idxmax()  # the method with loci (the test above needs one)
    other = ({"minp", "multivariate"} - {method}).pop()
    expected = annotated[annotated["method"] == method]
    out = CliRunner().invoke(main, ["loci", "--cohort", "e2e", "--method", method])
    assert out.exit_code == 0, out.output
    assert f"{len(expected)} loci" in out.output and other not in out.output
    for row in expected.itertuples():
        assert row.top_snp in out.output and row.nearest_gene in out.output


def test_a_chromosome_the_cohort_lacks_is_recorded_not_genotyped_and_left_out(pipeline):
    """Another cohort's chromosome is a partition of this one too (the partitions are a product)."""
    import dagster as dg

    from udip_assets.defs.run import _materialize

    db, instance, _ = pipeline
    assert set(instance.get_dynamic_partitions("chrom")) == {"6", "11"}  # what the .bim holds, not 1-22 + X
    instance.add_dynamic_partitions("chrom", ["2"])
    try:
        before = _one(db, "SELECT count(*) FROM minp WHERE cohort = 'e2e'")
        keys, key, config = _stage("key:gwas_sumstats", dg.MultiPartitionKey({"cohort": "e2e", "chrom": "2"}))
        result = _materialize(keys, key, instance, config)
        assert result.success, result.all_events
        meta = instance.get_latest_materialization_event(dg.AssetKey("gwas_sumstats")).asset_materialization.metadata
        assert meta["genotyped"].value is False and meta["n_variants"].value == 0
        keys, key, config = _stage("key:minp_sumstats", "e2e")
        assert _materialize(keys, key, instance, config).success
        assert _one(db, "SELECT count(*) FROM minp WHERE cohort = 'e2e'") == before
    finally:
        instance.delete_dynamic_partition("chrom", "2")


def test_a_gwas_partition_runs_as_a_slurm_job_and_matches_the_in_process_one(pipeline, slurm_cluster, monkeypatch):
    """compute=slurm: the chromosome is tested by a batch job on the one-node cluster (Dagster Pipes);
    its files equal the in-process run's, its hits replace the partition's rows (none duplicated),
    and the worker's log lines are in the run's event log."""
    import dagster as dg
    import pandas as pd

    from udip_assets.cluster.slurm import job_state
    from udip_assets.defs.gwas import gwas_dir
    from udip_assets.defs.resources import UdipHome
    from udip_assets.defs.run import _materialize

    db, instance, _ = pipeline
    model_id = _one(db, "SELECT DISTINCT model_id FROM gwas_hits WHERE cohort = 'e2e' AND chrom = '6'")
    folder = gwas_dir(UdipHome(), "e2e", model_id, "6")
    hits_sql = "SELECT * EXCLUDE (cohort) FROM gwas_hits WHERE cohort = 'e2e' AND chrom = '6' ORDER BY snp, dim"
    before = read_frame(db, hits_sql), pd.read_parquet(folder / "sumstats.parquet")
    assert len(before[0]) > 0
    monkeypatch.setenv("UDIP_COMPUTE", "slurm")
    keys, key, config = _stage("key:gwas_sumstats", dg.MultiPartitionKey({"cohort": "e2e", "chrom": "6"}))
    result = _materialize(keys, key, instance, config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = instance.get_latest_materialization_event(dg.AssetKey("gwas_sumstats")).asset_materialization.metadata
    assert meta["compute"].value == "slurm"
    job = job_state(meta["slurm_job_id"].value)
    assert job.state == "COMPLETED" and job.exit_code == "0:0"
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any(f"tested {meta['n_variants'].value} variants" in m for m in logs)  # from the job, via Pipes
    after = read_frame(db, hits_sql), pd.read_parquet(folder / "sumstats.parquet")
    pd.testing.assert_frame_equal(after[0][["snp", "dim"]], before[0][["snp", "dim"]])  # same rows, once each
    pd.testing.assert_frame_equal(after[0], before[0], check_exact=False, rtol=1e-9)
    pd.testing.assert_frame_equal(after[1], before[1], check_exact=False, rtol=1e-5)


def test_the_selected_checkpoint_is_registered_and_its_alias_encodes_as_the_checkpoint(pipeline, udip_home):
    import dagster as dg
    from mlflow import MlflowClient

    from udip_assets.defs.run import _materialize
    from udip_assets.model.extract import extract_udips
    from udip_assets.model.registry import REGISTERED_MODEL, load_encoder, model_uri

    db, instance, _ = pipeline
    uri = f"sqlite:///{udip_home / 'mlflow.db'}"
    chosen = read_frame(db, "SELECT s.model_id, c.path, c.mlflow_run_id FROM model_selection s JOIN checkpoints c "
                            "USING (model_id) WHERE s.cohort = 'e2e' AND s.selected").iloc[0]
    version = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(REGISTERED_MODEL,
                                                                                          "selected-e2e")
    assert version.tags["model_id"] == chosen["model_id"] and version.run_id == chosen["mlflow_run_id"]
    assert version.tags["dagster_run_id"]
    scans = read_frame(db, "SELECT subject_id, cache_path FROM preprocessed_scans WHERE cohort = 'e2e' "
                           "AND split = 'inference' AND status = 'ok' ORDER BY subject_id LIMIT 3")
    got = load_encoder(uri, model_uri("e2e")).predict(scans)
    want = extract_udips(chosen["path"], scans["cache_path"].tolist(), scans["subject_id"].tolist(),
                         show_progress=False)
    assert list(got.columns) == list(want.columns)
    np.testing.assert_array_equal(got.drop(columns="subject_id").to_numpy(), want.drop(columns="subject_id").to_numpy())
    # udip_embeddings loads the model by its alias too
    keys, key, config = _stage("key:udip_embeddings", "e2e", {"ops": {"udip_embeddings": {"config": {
        "model_uri": model_uri("e2e"), "device": "cpu"}}}})
    assert _materialize(keys, key, instance, config).success
    meta = instance.get_latest_materialization_event(dg.AssetKey("udip_embeddings")).asset_materialization.metadata
    assert meta["model_id"].value == chosen["model_id"] and "registered model" in meta["chosen_by"].value


def test_a_32_dim_model_is_thresholded_alike_by_udip_gwas(pipeline, udip_home, tmp_path):
    """The standalone engine on the same UDIPs: its genome-wide line is the pipeline's, 5e-8 / 32."""
    from click.testing import CliRunner

    from udip_assets.cli import main
    from udip_assets.cohort.spec import load_cohort
    from udip_assets.genetics.design import write_plink2_table

    db, _, _ = pipeline
    model_id = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    udips = read_frame(db, f"SELECT * FROM udips WHERE cohort = 'e2e' AND model_id = '{model_id}'")
    pheno = udips.set_index("subject_id")[list(UDIP_COLUMNS[:32])]
    write_plink2_table(tmp_path / "pheno.txt", pheno)
    genotypes = load_cohort(udip_home / "cohorts" / "e2e").genotypes
    out = CliRunner().invoke(main, ["gwas", "--bfile", str(genotypes),
                                    "--pheno", str(tmp_path / "pheno.txt"), "--out", str(tmp_path / "run"),
                                    "--no-sumstats", "--threads", "1"])
    assert out.exit_code == 0, out.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["n_dims"] == 32 and summary["sig_p"] == pytest.approx(5e-8 / 32)


def _stage(keys: str, partition, run_config: dict | None = None):
    """One in-process run of the assets ``keys`` (a selection string) for one partition key."""
    import dagster as dg

    from udip_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    return set(dg.AssetSelection.from_string(keys).resolve(graph)), partition, run_config or {}


def test_a_rerun_of_training_keeps_the_selection(pipeline):
    """Training writes checkpoints; the sweep's choice lives in its own table and flows to udip_embeddings."""
    from udip_assets.defs.run import materialize_cohort

    db, instance, _ = pipeline
    chosen = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    rerun = materialize_cohort("e2e", selection="key:vit_ae_model or key:udip_embeddings", run_config=RUN_CONFIG,
                               instance=instance)
    assert rerun.success, rerun.failures()
    assert _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected") == chosen
    import dagster as dg

    meta = instance.get_latest_materialization_event(dg.AssetKey("udip_embeddings")).asset_materialization.metadata
    assert meta["model_id"].value == chosen and "most loci" in meta["chosen_by"].value


def test_a_run_never_mixes_model_ids(pipeline):
    """Chromosomes of two models (the UDIPs re-encoded between two GWAS runs) stop minP, naming the fix."""
    import dagster as dg

    from udip_assets.defs.run import _materialize

    db, instance, _ = pipeline
    chosen = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    other = _one(db, f"SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND model_id <> '{chosen}'")
    chrom = {c: dg.MultiPartitionKey({"cohort": "e2e", "chrom": c}) for c in ("6", "11")}
    other_config = {"ops": {"udip_embeddings": {"config": {"model_id": other, "device": "cpu"}}}}
    steps = [_stage("key:udip_embeddings", "e2e", other_config), _stage("key:gwas_sumstats", chrom["6"])]
    for keys, key, config in steps:
        assert _materialize(keys, key, instance, config).success
    keys, key, config = _stage("key:minp_sumstats", "e2e")
    mixed = _materialize(keys, key, instance, config)
    assert not mixed.success
    message = " ".join(e.event_specific_data.error.message for e in mixed.all_events if e.is_step_failure)
    assert f"{other}: chromosomes 6" in message and f"{chosen}: chromosomes 11" in message
    assert "re-materialize gwas_sumstats for every chromosome" in message
    assert _one(db, f"SELECT count(*) FROM minp WHERE model_id = '{other}'") == 0  # nothing half-written
    # the fix the message names: the other chromosome too, then minP is of one model
    for keys, key, config in (_stage("key:gwas_sumstats", chrom["11"]), _stage("key:minp_sumstats", "e2e")):
        assert _materialize(keys, key, instance, config).success
    assert _one(db, f"SELECT count(*) FROM minp WHERE model_id = '{other}'") > 1000
    meta = instance.get_latest_materialization_event(dg.AssetKey("minp_sumstats")).asset_materialization.metadata
    assert meta["model_id"].value == other


def test_training_on_two_processes_through_torchrun_equals_one_process_over_both_batches(pipeline):
    """nproc_per_node=2: vit_ae_model runs torchrun (gloo on CPU) through Dagster Pipes, rank 0 logs and
    reports; two processes of 2 scans per step train the weights of the pipeline's one process of 4."""
    import dagster as dg
    import torch

    from udip_assets.defs.run import _materialize
    from udip_assets.model.checkpoint import read_checkpoint

    db, instance, _ = pipeline
    single = read_frame(db, "SELECT run_id, path FROM checkpoints WHERE cohort = 'e2e' AND epoch = 4")
    assert len(single) == 1
    config = {"ops": {"vit_ae_model": {"config": {**RUN_CONFIG["ops"]["vit_ae_model"]["config"], "batch_size": 2,
                                                  "nproc_per_node": 2}}}}
    keys, key, config = _stage("key:vit_ae_model", "e2e", config)
    result = _materialize(keys, key, instance, config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = instance.get_latest_materialization_event(dg.AssetKey("vit_ae_model")).asset_materialization.metadata
    ddp_run = meta["training_run"].value
    assert ddp_run != single["run_id"][0] and meta["epochs"].value == 4
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any("torchrun: 2 processes" in m for m in logs)
    assert sum(m.startswith("epoch ") and " val " in m for m in logs) == 4  # rank 0 only, through Pipes
    assert _one(db, f"SELECT count(*) FROM training_epochs WHERE run_id = '{ddp_run}'") == 4
    a = read_checkpoint(single["path"][0])
    b = read_checkpoint(_one(db, f"SELECT path FROM checkpoints WHERE run_id = '{ddp_run}' AND epoch = 4"))
    for name in a["model"]:
        torch.testing.assert_close(b["model"][name], a["model"][name], rtol=1e-3, atol=1e-4, msg=name)
    np.testing.assert_allclose([h["val_loss"] for h in b["history"]], [h["val_loss"] for h in a["history"]],
                               rtol=1e-4)


_EXTRACT_CHILD = r"""
import sys
import dagster as dg
import udip_assets.defs.model as model_defs
from udip_assets.defs.run import materialize_cohort

encode = model_defs.encode_scans

def announced(*args, **kwargs):
    print("ENCODING", flush=True)
    return encode(*args, **kwargs)

model_defs.encode_scans = announced
config = {"ops": {"udip_embeddings": {"config": {"model_id": sys.argv[1], "splits": ["inference", "val"],
                                                 "device": "cpu"}}}}
result = materialize_cohort("e2e", selection="key:udip_embeddings", run_config=config,
                            instance=dg.DagsterInstance.ephemeral())
print("DONE" if result.success else "FAILED", flush=True)
"""


def test_sigkill_mid_extraction_leaves_the_previous_udips_and_a_rerun_encodes_every_scan(pipeline, udip_home,
                                                                                        tmp_path):
    """udip_embeddings killed with SIGKILL while it encodes (a second process, no handler runs): the
    checkpoint's UDIP rows are those from before; the re-run writes every scan once, and the scans
    the loci sweep also encoded get the sweep's UDIPs bit for bit (a UDIP does not depend on its batch)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    db, _, _ = pipeline
    chosen = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    other = _one(db, f"SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND model_id <> '{chosen}'")
    rows_of = f"SELECT * FROM udips WHERE cohort = 'e2e' AND model_id = '{other}' ORDER BY subject_id"
    before = read_frame(db, rows_of)
    env = {**os.environ, "UDIP_HOME": str(udip_home), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-c", _EXTRACT_CHILD, other]
    err = tmp_path / "victim.err"
    with err.open("w") as stderr:
        victim = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True)
    lines = []
    for line in victim.stdout:
        lines.append(line.strip())
        if line.strip() == "ENCODING":
            break
    time.sleep(0.5)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait(30)
    assert victim.returncode == -signal.SIGKILL and lines[-1:] == ["ENCODING"], (lines, err.read_text()[-3000:])
    after_kill = read_frame(db, rows_of)
    assert after_kill.equals(before)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and "DONE" in done.stdout, done.stderr[-3000:]
    rows = read_frame(db, rows_of)
    wanted = read_frame(db, "SELECT subject_id, split FROM subjects WHERE cohort = 'e2e' AND kept "
                            "AND split IN ('inference', 'val') ORDER BY subject_id")
    assert rows["subject_id"].tolist() == wanted["subject_id"].tolist()  # each scan once, none missing
    sweep = read_frame(db, f"SELECT * FROM sweep_udips WHERE cohort = 'e2e' AND model_id = '{other}' "
                           "ORDER BY subject_id")
    assert len(sweep) > 100
    common = rows.set_index("subject_id").loc[sweep["subject_id"]]
    cols = [c for c in UDIP_COLUMNS if sweep[c].notna().all()]
    np.testing.assert_array_equal(common[cols].to_numpy(), sweep[cols].to_numpy())


def test_extraction_runs_as_a_slurm_job_and_gives_the_in_process_udips(pipeline, slurm_cluster, monkeypatch):
    """compute=slurm: udip_embeddings encodes in a batch job (the worker's encode task, scan list in and
    UDIP Parquet out); every scan is written once and those the loci sweep encoded in process carry
    its UDIPs bit for bit."""

    from udip_assets.defs.run import _materialize

    db, instance, _ = pipeline
    chosen = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    other = _one(db, f"SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND model_id <> '{chosen}'")
    monkeypatch.setenv("UDIP_COMPUTE", "slurm")
    config = {"ops": {"udip_embeddings": {"config": {"model_id": other, "splits": ["inference", "val"],
                                                     "device": "auto"}}}}
    keys, key, config = _stage("key:udip_embeddings", "e2e", config)
    result = _materialize(keys, key, instance, config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("submitted SLURM job") for m in logs)
    assert any(m.startswith("encoding ") and " scans on cpu" in m for m in logs)  # from the job, via Pipes
    rows = read_frame(db, f"SELECT * FROM udips WHERE cohort = 'e2e' AND model_id = '{other}' ORDER BY subject_id")
    wanted = read_frame(db, "SELECT subject_id FROM subjects WHERE cohort = 'e2e' AND kept "
                            "AND split IN ('inference', 'val') ORDER BY subject_id")
    assert rows["subject_id"].tolist() == wanted["subject_id"].tolist()
    sweep = read_frame(db, f"SELECT * FROM sweep_udips WHERE cohort = 'e2e' AND model_id = '{other}' "
                           "ORDER BY subject_id")
    cols = [c for c in UDIP_COLUMNS if sweep[c].notna().all()]
    np.testing.assert_array_equal(rows.set_index("subject_id").loc[sweep["subject_id"], cols].to_numpy(),
                                  sweep[cols].to_numpy())


def test_perdi_runs_as_a_slurm_job_and_writes_the_in_process_maps(pipeline, slurm_cluster, monkeypatch, tmp_path):
    """compute=slurm: perdi_maps computes and writes its maps in a batch job (the worker's perdi task);
    the NIfTI maps equal those the same step wrote in process just before, and perdi_dims has the
    same rows. (The in-process run comes first: an earlier test may have moved minP to another model.)"""
    import shutil

    import dagster as dg
    import nibabel as nib

    from udip_assets.defs.run import _materialize

    db, instance, _ = pipeline
    keys, key, config = _stage("key:perdi_maps", "e2e", {"ops": {"perdi_maps": RUN_CONFIG["ops"]["perdi_maps"]}})
    local = _materialize(keys, key, instance, config)
    assert local.success, [e.message for e in local.all_events if e.is_failure]
    meta = instance.get_latest_materialization_event(dg.AssetKey("perdi_maps")).asset_materialization.metadata
    assert meta["compute"].value == "local"
    dims_sql = ("SELECT dim, n_subjects, chosen_because, nifti_path FROM perdi_dims WHERE cohort = 'e2e' "
                f"AND model_id = '{meta['model_id'].value}' ORDER BY dim")
    before = read_frame(db, dims_sql)
    assert len(before) >= 1
    kept = {row.dim: shutil.copy(row.nifti_path, tmp_path / f"{row.dim}.nii.gz") for row in before.itertuples()}
    monkeypatch.setenv("UDIP_COMPUTE", "slurm")
    result = _materialize(keys, key, instance, config)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = instance.get_latest_materialization_event(dg.AssetKey("perdi_maps")).asset_materialization.metadata
    assert meta["compute"].value == "slurm"
    logs = [e.message for e in instance.all_logs(result.run_id)]
    assert any(m.startswith("submitted SLURM job") for m in logs)
    assert any(m.startswith("PerDI of dims") and " on cpu " in m for m in logs)  # from the job, via Pipes
    after = read_frame(db, dims_sql)
    pd_cols = ["dim", "n_subjects", "chosen_because", "nifti_path"]
    assert after[pd_cols].values.tolist() == before[pd_cols].values.tolist()
    for row in after.itertuples():
        got = np.asarray(nib.load(row.nifti_path).dataobj)
        want = np.asarray(nib.load(kept[row.dim]).dataobj)
        assert np.abs(want).max() > 1  # a map, not an empty volume
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3, err_msg=f"dim {row.dim}")


def test_training_runs_as_a_slurm_job_and_trains_the_weights_of_the_in_process_run(pipeline, slurm_cluster,
                                                                                    monkeypatch, tmp_path):
    """compute=slurm: vit_ae_model submits the worker's train task as a batch job (Dagster Pipes); the
    epochs it logs reach the run's event log, and from scratch it trains the weights the pipeline's
    in-process training wrote. (Last in the module: it retrains a run the other tests read.)"""
    import shutil

    import dagster as dg
    import torch

    from udip_assets.defs.run import _materialize
    from udip_assets.model.checkpoint import read_checkpoint

    db, instance, _ = pipeline
    chosen = _one(db, "SELECT model_id FROM model_selection WHERE cohort = 'e2e' AND selected")
    run_id = _one(db, f"SELECT run_id FROM checkpoints WHERE model_id = '{chosen}'")
    paths = read_frame(db, f"SELECT epoch, path FROM checkpoints WHERE run_id = '{run_id}' ORDER BY epoch")
    assert paths["epoch"].tolist() == [2, 4]
    reference = {e: read_checkpoint(p)["model"] for e, p in zip(paths["epoch"], paths["path"], strict=True)}
    out_dir = Path(paths["path"][0]).parent
    kept = tmp_path / "in-process"
    shutil.move(out_dir, kept)  # so the job trains the same run from its first epoch
    try:
        monkeypatch.setenv("UDIP_COMPUTE", "slurm")
        only_training = {"ops": {"vit_ae_model": RUN_CONFIG["ops"]["vit_ae_model"]}}
        keys, key, config = _stage("key:vit_ae_model", "e2e", only_training)
        result = _materialize(keys, key, instance, config)
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        meta = instance.get_latest_materialization_event(dg.AssetKey("vit_ae_model")).asset_materialization.metadata
        assert meta["training_run"].value == run_id and meta["epochs"].value == 4
        logs = [e.message for e in instance.all_logs(result.run_id)]
        assert any(m.startswith("submitted SLURM job") for m in logs)
        assert sum(m.startswith("epoch ") and " val " in m for m in logs) == 4  # from the job, through Pipes
        assert (out_dir / "job").is_dir() and list((out_dir / "job").glob("slurm-*.out"))
        for epoch, path in zip(paths["epoch"], paths["path"], strict=True):
            trained = read_checkpoint(path)["model"]
            for name, want in reference[epoch].items():
                torch.testing.assert_close(trained[name], want, rtol=1e-3, atol=1e-4, msg=f"epoch {epoch} {name}")
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
        shutil.move(kept, out_dir)  # the in-process files back, bit for bit
