"""``udip gwas`` end to end on a small PLINK fileset: the files it writes, their contents against
statsmodels, and the messages of bad invocations."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from click.testing import CliRunner

from udip_assets.genetics.design import write_plink2_table
from udip_assets.genetics.gwas_cli import gwas_command
from udip_assets.genetics.plink import write_plink

N, M = 120, 60


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gwas_cli")
    rng = np.random.default_rng(2)
    iids = [f"p{k}" for k in range(N)]
    g = rng.binomial(2, rng.uniform(0.1, 0.5, M), size=(N, M)).astype(float)
    g[rng.random((N, M)) < 0.02] = np.nan
    site = rng.choice(["leeds", "york", "bath"], N)
    cov = pd.DataFrame({"age": rng.normal(55, 6, N), "site": site}, index=iids)
    y = rng.standard_normal((N, 2))
    y[:, 1] += 1.2 * np.nan_to_num(g[:, 10], nan=1.0)
    variants = pd.DataFrame({"snp": [f"rs{j}" for j in range(M)], "chrom": np.where(np.arange(M) < 40, 3, 12),
                             "pos_bp": 500 * np.arange(M) + 7, "a1": "C", "a2": "T"})
    write_plink(root / "geno", iids, g, variants)
    pheno = pd.DataFrame(y, index=iids, columns=["udip_000", "udip_001"])
    write_plink2_table(root / "pheno.txt", pheno)
    write_plink2_table(root / "covar.txt", cov)
    return root, g, pheno, cov


def test_cli_writes_sumstats_minp_and_summary(inputs):
    root, g, pheno, cov = inputs
    out = root / "run1"
    result = CliRunner().invoke(gwas_command, [
        "--bfile", str(root / "geno"), "--pheno", str(root / "pheno.txt"), "--covar", str(root / "covar.txt"),
        "--out", str(out), "--maf", "0.0", "--call-rate", "0.5", "--threshold", "1e-3", "--chunk-size", "16",
        "--threads", "1"])
    assert result.exit_code == 0, result.output
    assert "120 samples x 60 SNPs x 2 phenotypes" in result.output
    minp = pd.read_csv(out / "minp.tsv", sep="\t")
    assert list(minp.columns) == ["SNP", "CHR", "BP", "A1", "A2", "P", "dim", "BETA", "SE"]
    assert len(minp) == M and set(minp["CHR"]) == {3, 12}
    parts = {p.name: pd.read_parquet(p) for p in (out / "sumstats").glob("*.parquet")}
    assert sorted(parts) == ["chr12.parquet", "chr3.parquet"] and sum(map(len, parts.values())) == 2 * M
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_samples"] == N and summary["n_variants"] == M and summary["n_dims"] == 2
    assert summary["sig_p"] == 5e-8 / 2  # genome-wide over the phenotypes tested, as the pipeline's minP
    assert summary["options"]["missing"] == "drop" and summary["options"]["keep_p"] == 1e-3
    assert summary["covariates_used"][0] == "age" and len(summary["covariates_used"]) == 3  # + 2 site dummies
    assert summary["lambda_gc_min"] <= summary["lambda_gc_max"] and summary["seconds"] > 0
    assert (out / "manhattan.png").stat().st_size > 1000 and (out / "qq.png").stat().st_size > 1000
    hits = pd.read_csv(out / "hits.tsv", sep="\t")
    assert ("rs10", 1) in set(zip(hits["snp"], hits["dim"], strict=True))
    # an independent check of one row: statsmodels on the called samples, site one-hot
    called = ~np.isnan(g[:, 10])
    design = pd.get_dummies(cov["site"], drop_first=False).astype(float)
    dummies = design.drop(columns=design.sum().idxmax())
    x = np.column_stack([np.ones(N), g[:, 10], cov["age"], dummies])[called]
    fit = sm.OLS(pheno["udip_001"].to_numpy()[called], x).fit()
    row = minp.set_index("SNP").loc["rs10"]
    assert row["dim"] == 1
    assert row["BETA"] == pytest.approx(fit.params[1], rel=1e-5)
    assert row["P"] == pytest.approx(fit.pvalues[1], rel=1e-5)


def test_cli_refuses_two_genotype_inputs(inputs):
    root, *_ = inputs
    bgen = root / "x.bgen"
    bgen.write_bytes(b"")
    result = CliRunner().invoke(gwas_command, ["--bfile", str(root / "geno"), "--bgen", str(bgen), "--pheno",
                                               str(root / "pheno.txt"), "--out", str(root / "bad")])
    assert result.exit_code != 0
    assert "pass exactly one of --bfile PREFIX or --bgen FILE (got both)" in result.output


def test_cli_reports_nan_phenotypes_by_subject(inputs):
    root, _, pheno, _ = inputs
    bad = pheno.copy()
    bad.loc["p7", "udip_000"] = np.nan
    write_plink2_table(root / "bad_pheno.txt", bad)
    args = ["--bfile", str(root / "geno"), "--pheno", str(root / "bad_pheno.txt"), "--covar",
            str(root / "covar.txt"), "--out", str(root / "bad2")]
    result = CliRunner().invoke(gwas_command, args)
    assert result.exit_code != 0
    expected = "phenotype column(s) ['udip_000'] hold NaN or infinite values for 1 subject(s) ['p7']"
    assert expected in result.output
    assert not (root / "bad2" / "summary.json").exists()


def test_cli_reports_a_bad_option_value(inputs):
    root, *_ = inputs
    args = ["--bfile", str(root / "geno"), "--pheno", str(root / "pheno.txt"), "--out", str(root / "bad3"),
            "--maf", "0.7"]
    result = CliRunner().invoke(gwas_command, args)
    assert result.exit_code != 0 and "GwasConfig.maf_min must be in [0, 0.5), got 0.7" in result.output


def test_udip_gwas_is_the_same_command(inputs):
    from udip_assets.cli import main

    root, _, _, _ = inputs
    result = CliRunner().invoke(main, ["gwas", "--help"])
    assert result.exit_code == 0 and "--bfile" in result.output and "--bgen" in result.output
    result = CliRunner().invoke(main, ["gwas", "--pheno", str(root / "pheno.txt"), "--out", str(root / "x")])
    assert result.exit_code != 0 and "--bfile" in result.output
