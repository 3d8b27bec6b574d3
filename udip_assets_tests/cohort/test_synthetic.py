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
