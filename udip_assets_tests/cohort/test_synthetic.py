"""The synthetic cohort: UKBB layout and formats, determinism, and truth that holds when measured."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from udip_assets.cohort.spec import find_scans, load_cohort
from udip_assets.cohort.synth_build import generate_cohort
from udip_assets.cohort.synthetic import gwas_power
from udip_assets.errors import UdipConfigError
from udip_assets.genetics.plink import read_bim, read_dosage, read_fam
from udip_assets.imaging.grids import MNI152_2MM
from udip_assets_tests.conftest import tiny_config


def test_layout_and_files(tiny_cohort):
    spec = load_cohort(tiny_cohort.root)
    scans = find_scans(spec)
    assert scans["visit"].isin([2, 3]).all() and (scans["visit"] == 3).any()
    for p in scans["path"]:
        assert p.endswith("_20252_2_0/T1/T1_brain_to_MNI.nii.gz") or p.endswith("_20252_3_0/T1/T1_brain_to_MNI.nii.gz")
    cov = pd.read_csv(spec.covariates)
    for col in ["eid", "21003-2.0", "31-0.0", "21000-0.0", "25735-2.0", "54-2.0",
                *(f"22009-0.{i}" for i in range(1, 11))]:
        assert col in cov.columns, col
    rel = pd.read_csv(spec.relatedness, sep=r"\s+")
    assert list(rel.columns) == ["ID1", "ID2", "HetHet", "IBS0", "Kinship"] and len(rel) >= 1
    genes = pd.read_csv(spec.genes, sep="\t")
    assert {"name", "chrom", "start", "end"} <= set(genes.columns)


def test_scans_load_with_the_fsl_affine_and_zero_background(tiny_cohort):
    faults = json.loads((tiny_cohort.root / "faults.json").read_text())
    damaged = {e for v in faults.values() for e in v}
    scans = find_scans(tiny_cohort)
    good = scans[~scans["subject_id"].isin(damaged)].iloc[0]
    img = nib.load(good["path"])
    assert img.shape == (91, 109, 91)
    np.testing.assert_allclose(img.affine, MNI152_2MM.affine)
    data = np.asarray(img.dataobj)
    assert data[0, 0, 0] == 0 and data[:, :, -1].max() == 0
    assert (data > 0).mean() > 0.1


def test_truth_names_each_planted_snp_in_the_genotypes(tiny_cohort):
    truth = json.loads(tiny_cohort.truth.read_text())
    bim = read_bim(tiny_cohort.genotypes.with_suffix(".bim"))
    assert len(truth["causal"]) == 3
    for entry in truth["causal"]:
        assert {"snp", "chrom", "pos_bp", "region", "effect", "detectable"} <= set(entry)
        row = bim[bim["snp"] == entry["snp"]].iloc[0]
        assert (row["chrom"], row["pos_bp"]) == (entry["chrom"], entry["pos_bp"])


def test_same_seed_same_cohort_other_seed_other(tmp_path, tiny_cohort):
    again = generate_cohort(tiny_config(with_faults=True), tmp_path / "again", progress=False)
    for rel in ["genotypes/cohort.bed", "genotypes/cohort.bim", "covariates.csv", "ukb_rel.dat", "truth.json"]:
        assert (again.root / rel).read_bytes() == (tiny_cohort.root / rel).read_bytes(), rel
    a, b = find_scans(again).iloc[5]["path"], find_scans(tiny_cohort).iloc[5]["path"]
    np.testing.assert_array_equal(np.asarray(nib.load(a).dataobj), np.asarray(nib.load(b).dataobj))
    other = generate_cohort(tiny_config(seed=12, with_faults=False, n_subjects=30), tmp_path / "other", progress=False)
    assert (other.root / "covariates.csv").read_bytes() != (tiny_cohort.root / "covariates.csv").read_bytes()


def test_existing_cohort_is_reused_and_other_settings_refused(tiny_cohort):
    before = (tiny_cohort.root / "cohort.yaml").stat().st_mtime_ns
    generate_cohort(tiny_config(), tiny_cohort.root, progress=False)
    assert (tiny_cohort.root / "cohort.yaml").stat().st_mtime_ns == before
    with pytest.raises(UdipConfigError, match="--force"):
        generate_cohort(tiny_config(seed=99), tiny_cohort.root, progress=False)


def test_planted_snp_changes_its_region_volume_by_the_planted_amount(tiny_cohort):
    """Measure each subject's region volume through the warped atlas; regress on the causal dosage."""
    from udip_assets.imaging.anatomy import load_anatomy, region_volume_mm3
    from udip_assets.imaging.synth_brain import Morphology, sample_warp, warp_labels

    truth = json.loads(tiny_cohort.truth.read_text())
    entry = next(e for e in truth["causal"] if e["region"] == "ventricles" and e["kind"] == "volume")
    subjects = pd.read_csv(tiny_cohort.root / "truth_subjects.csv", dtype={"eid": str})
    subjects = subjects[subjects["visit"] == 2]
    fam = read_fam(tiny_cohort.genotypes.with_suffix(".fam"))
    bim = read_bim(tiny_cohort.genotypes.with_suffix(".bim"))
    g_all = read_dosage(tiny_cohort.genotypes, variant_idx=np.flatnonzero(bim["snp"] == entry["snp"]))[:, 0]
    dosage = dict(zip(fam["iid"].astype(str), g_all, strict=True))
    anatomy = load_anatomy(MNI152_2MM)
    template = anatomy.region_volume_mm3("ventricles")
    g, log_ratio = [], []
    for rec in subjects.itertuples():
        if rec.eid not in dosage:
            continue
        morph = json.loads(rec.morphology)
        # Hold head size, age and sex fixed so only the region's own change is measured.
        morph.update(head_scale=1.0, age_years=64.0, sex=0)
        m = Morphology(**morph)
        warp = sample_warp(anatomy, m, np.random.default_rng([rec.subject_seed, 0]))
        vol = region_volume_mm3(warp_labels(anatomy, warp), MNI152_2MM, "ventricles")
        g.append(dosage[rec.eid])
        log_ratio.append(np.log(vol / template))
    g, log_ratio = np.asarray(g), np.asarray(log_ratio)
    slope, _ = np.polyfit(g, log_ratio, 1)
    resid = log_ratio - np.polyval(np.polyfit(g, log_ratio, 1), g)
    se = resid.std(ddof=2) / (g.std() * np.sqrt(len(g)))
    assert abs(slope - entry["effect"]) < max(3 * se, 0.15 * entry["effect"]), (slope, entry["effect"], se)


def test_power_rule():
    assert gwas_power(1000, 0.10) > 0.99
    assert gwas_power(1000, 0.01) < 0.05


def test_covariate_pcs_separate_the_ancestral_populations(tiny_cohort):
    cov = pd.read_csv(tiny_cohort.covariates, dtype={"eid": str}).drop_duplicates("eid")
    truth = pd.read_csv(tiny_cohort.root / "truth_subjects.csv", dtype={"eid": str}).drop_duplicates("eid")
    merged = cov.merge(truth[["eid", "population"]], on="eid")
    pc1, pop = merged["22009-0.1"].to_numpy(), merged["population"].to_numpy()
    assert 0 < pop.sum() < len(pop)
    # Threshold PC1 half way between the two population means: nearly everyone lands on their side.
    cut = (pc1[pop == 0].mean() + pc1[pop == 1].mean()) / 2
    side = (pc1 > cut) == (pc1[pop == 1].mean() > cut)
    assert (side == (pop == 1)).mean() > 0.95


def test_image_brain_volume_is_independent_of_head_size_field_25000(tiny_cohort):
    """Head size lives in the covariate table (UKBB field 25000), not in the linearly registered image."""
    cov = pd.read_csv(tiny_cohort.covariates, dtype={"eid": str}).drop_duplicates("eid").set_index("eid")
    scaling, brain_voxels = [], []
    for eid, visit, path in find_scans(tiny_cohort)[["subject_id", "visit", "path"]].itertuples(index=False):
        if visit != 2 or pd.isna(cov.at[eid, "25000-2.0"]):
            continue
        try:
            data = np.asarray(nib.load(path).dataobj)
        except Exception:  # the cohort's deliberately damaged scans
            continue
        if not np.isfinite(data).all() or data.shape != MNI152_2MM.shape or not data.any():
            continue
        scaling.append(cov.at[eid, "25000-2.0"])
        brain_voxels.append(np.count_nonzero(data))
    scaling, brain_voxels = np.asarray(scaling), np.asarray(brain_voxels, float)
    assert len(scaling) > 40 and scaling.std() / scaling.mean() > 0.05  # head size varies ~10 % in volume
    assert brain_voxels.std() / brain_voxels.mean() < 0.02
    assert abs(np.corrcoef(scaling, brain_voxels)[0, 1]) < 0.4


def test_image_truth_volumes_equal_the_warped_atlas_measurement(tiny_cohort):
    """truth_image_volumes.tsv is what the image shows: the subject's warped atlas, measured by label count."""
    from udip_assets.cohort.synth_build import ScanJob, _subject_warp
    from udip_assets.imaging.anatomy import region_volume_mm3
    from udip_assets.imaging.synth_brain import warp_labels

    measured = pd.read_csv(tiny_cohort.root / "truth_image_volumes.tsv", sep="\t", dtype={"eid": str})
    subjects = pd.read_csv(tiny_cohort.root / "truth_subjects.csv", dtype={"eid": str})
    for rec in subjects.head(4).itertuples():
        job = ScanJob("unused", int(rec.subject_seed), int(rec.visit), 2, json.loads(rec.morphology))
        anatomy, _, warp = _subject_warp(job)
        labels = warp_labels(anatomy, warp)
        row = measured[(measured["eid"] == rec.eid) & (measured["visit"] == rec.visit)].iloc[0]
        for region in ("ventricles", "hippocampus", "thalamus"):
            assert row[f"{region}_mm3"] == pytest.approx(region_volume_mm3(labels, MNI152_2MM, region), rel=0.03)


def test_detectable_follows_the_configured_split_and_the_image_phenotype(tiny_cohort):
    from udip_assets.cohort.splits import SplitConfig
    from udip_assets.cohort.synthetic import detectable_at, expected_gwas_n
    from udip_assets.cohort.truth_check import load_truth

    cfg = tiny_config()
    assert expected_gwas_n(cfg, SplitConfig(train_count=20, val_count=5)) == round(60 * 0.95) - 25
    assert expected_gwas_n(cfg) == round(60 * SplitConfig().inference_fraction * 0.95)
    truth = load_truth(tiny_cohort.truth)
    assert ((truth["variance_explained_image"] > 0) & (truth["variance_explained_image"] < 1)).all()
    recorded = detectable_at(truth, expected_gwas_n(cfg))
    assert (recorded["detectable"] == truth["detectable"]).all()
    assert recorded["power"].to_numpy() == pytest.approx(truth["power"].to_numpy())
    # power follows the GWAS size: nothing is detectable in 10 subjects, everything planted in 100,000
    assert not detectable_at(truth, 10)["detectable"].any()
    assert detectable_at(truth, 100_000)["detectable"].all()
    # and the alpha of the number of dims tested
    assert (detectable_at(truth, 300, n_dims=1)["power"] >= detectable_at(truth, 300, n_dims=128)["power"]).all()


def test_image_variance_explained_is_the_partial_r2_given_age_and_sex():
    """Against statsmodels: the SNP's partial R2 in OLS of the measured phenotype on [1, age, sex, g]."""
    import statsmodels.api as sm

    from udip_assets.cohort.synthetic import image_variance_explained

    rng = np.random.default_rng(3)
    n = 500
    dosage = rng.binomial(2, 0.3, (n, 4)).astype(np.int8)
    age, sex = rng.uniform(45, 80, n), rng.integers(0, 2, n)
    measured = pd.DataFrame({"vol_thalamus": 0.01 * age + 0.05 * dosage[:, 2] + rng.normal(0, 0.1, n),
                             "stretch_ventricles": 0.02 * sex + 0.01 * dosage[:, 0] + rng.normal(0, 0.02, n),
                             "age": age, "sex": sex})
    causal = pd.DataFrame({"variant_index": [2, 0], "region": ["thalamus", "ventricles"], "kind": ["volume", "shape"]})
    got = image_variance_explained(dosage, causal, measured)
    for k, (col, snp) in enumerate((("vol_thalamus", 2), ("stretch_ventricles", 0))):
        fit = sm.OLS(measured[col], np.column_stack([np.ones(n), age, sex, dosage[:, snp]])).fit()
        t = fit.tvalues.iloc[-1]
        assert got[k] == pytest.approx(t**2 / (t**2 + fit.df_resid), rel=1e-9)
