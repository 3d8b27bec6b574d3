"""The GWAS engine against PLINK 2 ``--glm`` on the same files (missing calls included), and the
BGEN that ``plink2 --export bgen-1.2`` writes against the .bed it came from."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pandas as pd
import pytest

from udip_assets.genetics.design import write_plink2_table
from udip_assets.genetics.genotype_stream import BgenSource, PlinkSource
from udip_assets.genetics.gwas import GwasConfig, scan_associations
from udip_assets.genetics.plink import write_plink

PLINK2 = shutil.which("plink2")
pytestmark = pytest.mark.skipif(PLINK2 is None, reason="plink2 is not on PATH")
N, M, P = 300, 500, 3


@pytest.fixture(scope="module")
def plink_run(tmp_path_factory):
    """300 samples, 500 SNPs on two chromosomes with 3% missing calls, 3 phenotypes, 4 covariates
    that correlate with the genotypes; PLINK 2 --glm reports -log10 p (6 significant digits)."""
    root = tmp_path_factory.mktemp("plink2")
    rng = np.random.default_rng(11)
    iids = [f"s{k}" for k in range(N)]
    cov = pd.DataFrame({"age": rng.normal(60, 8, N), "sex": rng.integers(1, 3, N).astype(float),
                        "pc1": rng.standard_normal(N), "pc2": rng.standard_normal(N)}, index=iids)
    shift = 0.1 * np.tanh(cov["pc1"].to_numpy())[:, None]
    g = rng.binomial(2, np.clip(rng.uniform(0.05, 0.5, M)[None, :] + shift, 0.01, 0.99)).astype(float)
    y = rng.standard_normal((N, P)) + 0.5 * g[:, [3, 4, 5]] + 0.02 * cov[["age"]].to_numpy()
    g[rng.random((N, M)) < 0.03] = np.nan
    variants = pd.DataFrame({"snp": [f"rs{j}" for j in range(M)], "chrom": np.where(np.arange(M) < 300, 1, 2),
                             "pos_bp": np.arange(M) * 100 + 1, "a1": "A", "a2": "G"})
    pheno = pd.DataFrame(y, index=iids, columns=[f"udip_{d:03d}" for d in range(P)])
    write_plink(root / "g", iids, g, variants)
    write_plink2_table(root / "pheno.txt", pheno)
    write_plink2_table(root / "covar.txt", cov)
    subprocess.run([PLINK2, "--bfile", str(root / "g"), "--pheno", str(root / "pheno.txt"), "--covar",
                    str(root / "covar.txt"), "--covar-variance-standardize", "--glm", "hide-covar", "log10",
                    "cols=+a1freq,+beta,+nobs", "--threads", "1", "--out", str(root / "out")],
                   check=True, capture_output=True)
    tables = []
    for d, name in enumerate(pheno.columns):
        t = pd.read_csv(root / f"out.{name}.glm.linear", sep="\t")
        tables.append(t.assign(dim=d))
    return root, pheno, cov, g, pd.concat(tables, ignore_index=True)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_equals_plink2_glm_with_missing_calls(plink_run, dtype):
    root, pheno, cov, g, plink = plink_run
    cfg = GwasConfig(maf_min=0.0, call_rate_min=0.0, dtype=dtype, keep_p=1e-4, chunk_variants=128)
    path = root / f"ss_{dtype}.parquet"
    result = scan_associations(PlinkSource(root / "g"), pheno, cov, cfg, sumstats_path=path)
    ours = pd.read_parquet(path).astype({"snp": str, "a1": str})
    merged = ours.merge(plink, left_on=["snp", "dim"], right_on=["ID", "dim"], validate="1:1")
    assert len(merged) == M * P == len(plink)
    assert np.max(np.abs(merged["neg_log10_p"] - merged["LOG10_P"])) <= 1e-4
    sign = np.where(merged["A1"] == merged["a1"], 1.0, -1.0)  # PLINK 2 reports the minor allele as A1
    np.testing.assert_allclose(sign * merged["beta"], merged["BETA"], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(merged["se"], merged["SE"], rtol=2e-5)
    np.testing.assert_allclose(sign * merged["t"], merged["T_STAT"], rtol=2e-5, atol=1e-5)
    called = (~np.isnan(g)).sum(axis=0)
    assert (merged["OBS_CT"].to_numpy() == called[merged["snp"].str[2:].astype(int)]).all()
    top = plink[plink["LOG10_P"] > 4]
    significant = set(zip(top["ID"], top["dim"], strict=True))
    assert significant and set(zip(result.hits["snp"], result.hits["dim"], strict=True)) == significant


@pytest.mark.parametrize(("export", "a1_allele"), [([], "first"), (["ref-first"], "second")])
def test_bgen_exported_by_plink2_gives_the_bed_results(plink_run, export, a1_allele):
    root, pheno, cov, _, _ = plink_run
    out = root / f"gb_{a1_allele}"
    subprocess.run([PLINK2, "--bfile", str(root / "g"), "--export", "bgen-1.2", "bits=8", *export,
                    "--out", str(out)], check=True, capture_output=True)
    cfg = GwasConfig(maf_min=0.0, call_rate_min=0.0, keep_p=1.0, dtype="float64")
    from_bed = scan_associations(PlinkSource(root / "g", chrom=2), pheno, cov, cfg)
    bgen = BgenSource(out.with_suffix(".bgen"), sample_path=out.with_suffix(".sample"), chrom=2,
                      a1_allele=a1_allele)
    from_bgen = scan_associations(bgen, pheno, cov, cfg)
    pd.testing.assert_frame_equal(from_bgen.hits, from_bed.hits, rtol=1e-10)
    pd.testing.assert_frame_equal(from_bgen.minp, from_bed.minp, rtol=1e-10)
