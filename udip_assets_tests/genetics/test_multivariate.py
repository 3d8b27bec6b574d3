"""Joint F test of all phenotype dims per SNP against statsmodels (complete, called and mean-imputed
rows; rank-deficient phenotypes), float32 vs float64, untestable SNPs, the inverse-normal transform,
merged scans, ``udip gwas``'s multivariate.tsv, and the test's power on spread-out effects."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from click.testing import CliRunner
from scipy import special, stats
from statsmodels.multivariate.manova import MANOVA

from udip_assets.errors import UdipConfigError
from udip_assets.genetics.design import write_plink2_table
from udip_assets.genetics.genotype_stream import ArraySource
from udip_assets.genetics.gwas import GwasConfig, merge_results, scan_associations
from udip_assets.genetics.gwas_cli import gwas_command
from udip_assets.genetics.multivariate import (
    MULTIVARIATE_COLUMNS,
    inverse_normal_transform,
    whiten,
)
from udip_assets.genetics.plink import write_plink

N, M, P, K = 300, 40, 6, 4
JOINT_CAUSAL = (3, 17, 30)  # SNPs acting on several dims


def _cohort(seed: int = 5, n: int = N, m: int = M, n_dims: int = P, missing: float = 0.05):
    """Genotypes whose frequency follows two covariates, phenotypes with covariate and SNP effects."""
    rng = np.random.default_rng(seed)
    iids = [f"S{k:04d}" for k in range(n)]
    cov = pd.DataFrame({"age": rng.normal(60, 8, n), "sex": rng.integers(0, 2, n).astype(float),
                        "pc1": rng.standard_normal(n), "pc2": rng.standard_normal(n)}, index=iids)
    freq = np.clip(rng.uniform(0.1, 0.5, m)[None, :] + 0.15 * np.tanh(cov[["pc1"]].to_numpy())
                   + 0.05 * cov[["sex"]].to_numpy(), 0.02, 0.95)
    g = rng.binomial(2, freq).astype(np.float64)
    y = rng.standard_normal((n, n_dims)) @ rng.normal(0, 1, (n_dims, n_dims))  # correlated dims
    y += cov.to_numpy() @ rng.normal(0, 0.3, (K, n_dims))
    for snp in (s for s in JOINT_CAUSAL if s < m):
        y += 0.8 * g[:, [snp]] * rng.normal(0, 1, (1, n_dims))
    g_missing = g.copy()
    g_missing[rng.random((n, m)) < missing] = np.nan
    variants = pd.DataFrame({"snp": [f"rs{k}" for k in range(m)], "chrom": np.where(np.arange(m) < m // 2, 2, 7),
                             "pos_bp": 1_000 * np.arange(m) + 1, "a1": "A", "a2": "G"})
    pheno = pd.DataFrame(y, index=iids, columns=[f"udip_{d:03d}" for d in range(n_dims)])
    return g, g_missing, variants, pheno, cov


@pytest.fixture(scope="module")
def cohort():
    return _cohort()


def _scan(g, variants, pheno, cov, **cfg):
    options = {"maf_min": 0.0, "call_rate_min": 0.0, "chunk_variants": 16, "dtype": "float64",
               "threads": 1} | cfg
    return scan_associations(ArraySource(g, list(pheno.index), variants), pheno, cov, GwasConfig(**options))


def _reference(g: np.ndarray, y: np.ndarray, cov: np.ndarray, snps, mode: str = "drop") -> pd.DataFrame:
    """statsmodels: OLS of g on [1, C, Y] against g on [1, C], on called rows or mean-imputed."""
    rows = []
    for j in snps:
        gj = g[:, j].copy()
        called = ~np.isnan(gj)
        if mode == "mean_impute":
            gj[~called] = gj[called].mean()
            called[:] = True
        restricted = sm.OLS(gj[called], sm.add_constant(cov[called], has_constant="add")).fit()
        full = sm.OLS(gj[called], sm.add_constant(np.column_stack([cov, y])[called], has_constant="add")).fit()
        f, p, df1 = full.compare_f_test(restricted)
        rows.append({"snp": f"rs{j}", "n": int(called.sum()), "f": f, "df1": int(round(df1)),
                     "df2": int(round(full.df_resid)), "p": p})
    return pd.DataFrame(rows)


def _assert_matches(got: pd.DataFrame, ref: pd.DataFrame, rtol: float = 1e-6) -> None:
    merged = ref.merge(got.astype({"snp": str}), on="snp", suffixes=("_ref", ""), validate="1:1")
    assert len(merged) == len(ref)
    for col in ("n", "df1", "df2"):
        np.testing.assert_array_equal(merged[col], merged[f"{col}_ref"], err_msg=col)
    for col in ("f", "p"):
        np.testing.assert_allclose(merged[col], merged[f"{col}_ref"], rtol=rtol, err_msg=col)


@pytest.mark.parametrize(("missing", "mode", "n_dims"), [
    (0.0, "drop", P), (0.05, "drop", P), (0.05, "mean_impute", P),
    (0.01, "drop", 24),  # fewer missing samples + covariates than dims: the Woodbury form of the solve
])
def test_joint_test_equals_statsmodels_f_test(missing, mode, n_dims):
    g, g_missing, variants, pheno, cov = _cohort(missing=missing, n_dims=n_dims)
    genotypes = g_missing if missing else g
    result = _scan(genotypes, variants, pheno, cov, missing=mode)
    joint = result.multivariate
    assert list(joint.columns) == list(MULTIVARIATE_COLUMNS) and len(joint) == M == result.n_variants
    _assert_matches(joint, _reference(genotypes, pheno.to_numpy(), cov.to_numpy(), range(M), mode))
    assert (joint["df1"] == n_dims).all()
    if missing and mode == "drop":
        assert (joint["n"] < N).sum() > 30  # most SNPs were refitted on their called rows
    assert joint.set_index("snp").loc[[f"rs{s}" for s in JOINT_CAUSAL], "p"].max() < 1e-6


def test_joint_test_is_wilks_lambda_of_the_manova(cohort):
    """The reverse regression's F is the MANOVA test of Y on [1, C, g] (Wilks = Pillai = Hotelling)."""
    g, _, variants, pheno, cov = cohort
    joint = _scan(g, variants, pheno, cov).multivariate.set_index("snp")
    for j in (3, 8):
        exog = np.column_stack([np.ones(N), cov.to_numpy(), g[:, j]])
        contrast = np.zeros((1, exog.shape[1]))
        contrast[0, -1] = 1.0
        test = MANOVA(pheno.to_numpy(), exog).mv_test([("g", contrast)]).results["g"]["stat"]
        for name in ("Wilks' lambda", "Pillai's trace", "Hotelling-Lawley trace"):
            assert float(test.loc[name, "F Value"]) == pytest.approx(joint.loc[f"rs{j}", "f"], rel=1e-6)
            assert float(test.loc[name, "Pr > F"]) == pytest.approx(joint.loc[f"rs{j}", "p"], rel=1e-6)
        assert int(test.loc["Wilks' lambda", "Den DF"]) == joint.loc[f"rs{j}", "df2"] == N - 1 - K - P


@pytest.mark.parametrize("missing", ["drop", "mean_impute"])
def test_float32_agrees_with_float64_and_small_joint_p_are_refitted(cohort, missing):
    _, g, variants, pheno, cov = cohort
    j64 = _scan(g, variants, pheno, cov, missing=missing, keep_p=1e-4).multivariate
    j32 = _scan(g, variants, pheno, cov, missing=missing, keep_p=1e-4, dtype="float32").multivariate
    pd.testing.assert_frame_equal(j32[["snp", "n", "df1", "df2"]], j64[["snp", "n", "df1", "df2"]])
    assert np.max(np.abs(np.log10(j32["p"]) - np.log10(j64["p"]))) <= 1e-4
    small = j64["p"] < 1e-4
    assert small.sum() >= len(JOINT_CAUSAL)
    np.testing.assert_allclose(j32.loc[small, ["f", "p"]], j64.loc[small, ["f", "p"]], rtol=1e-9)


def test_rank_deficient_phenotypes_test_their_full_rank_subspace(cohort):
    _, g, variants, pheno, cov = cohort
    collapsed = pheno.assign(udip_006=pheno["udip_000"] - 2.0 * pheno["udip_003"],
                             udip_007=3.0 * pheno["udip_001"])  # rank stays 6 of 8 columns
    joint = _scan(g, variants, collapsed, cov).multivariate
    assert (joint["df1"] == P).all() and (joint["df2"] == joint["n"] - 1 - K - P).all()
    _assert_matches(joint, _reference(g, pheno.to_numpy(), cov.to_numpy(), range(M)))


def test_whitening_is_orthonormal_and_drops_null_directions():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((200, 4)) * np.array([1e-3, 1.0, 50.0, 7.0])
    y = np.column_stack([y, y[:, 0] + y[:, 2], 1e6 * y[:, 1]])
    y -= y.mean(axis=0)
    white = whiten(y, n_columns=1)
    assert white.rank == 4 and white.w.shape == (6, 4) and white.z_pad.shape == (201, 4)
    np.testing.assert_allclose(white.w.T @ (y.T @ y) @ white.w, np.eye(4), atol=1e-9)
    np.testing.assert_array_equal(white.z_pad[-1], 0.0)


def test_too_few_samples_give_nan_and_are_counted():
    """n = 13, c = 5, r = 6: complete SNPs keep df2 = 2, SNPs missing 2+ calls have df2 < 1."""
    g, _, variants, pheno, cov = _cohort(seed=9, n=13, m=12)
    g[:2, :4] = np.nan  # df2 = 0
    g[:4, 4] = np.nan  # df2 = -2
    result = _scan(g, variants, pheno, cov)
    joint = result.multivariate.set_index("snp")
    assert result.n_variants == 12  # each per-dim test still has df >= 1
    untestable = [f"rs{j}" for j in range(5)]
    assert joint.loc[untestable, ["f", "p"]].isna().all().all()
    assert (joint.loc[untestable, "df2"] < 1).all()
    rest = joint.drop(index=untestable)
    assert rest["p"].notna().all() and (rest["df2"] == 2).all()
    counts = result.summary()
    assert counts["n_multivariate"] == 12 and counts["n_multivariate_no_df"] == 5
    assert counts["n_multivariate_singular"] == 0


def test_called_samples_that_lose_a_phenotype_direction_give_nan(cohort):
    g, _, variants, pheno, cov = cohort
    g = g[:, :3].copy()
    spike = pheno.assign(udip_005=np.r_[np.ones(3), np.zeros(N - 3)])  # varies only on samples 0-2
    g[:3, 1] = np.nan
    result = _scan(g, variants.iloc[:3], spike, cov)
    joint = result.multivariate.set_index("snp")
    assert np.isnan(joint.loc["rs1", "p"]) and joint.loc["rs1", "df2"] >= 1
    assert joint.drop(index="rs1")["p"].notna().all()
    assert result.summary()["n_multivariate_singular"] == 1


def test_multivariate_off_gives_an_empty_table(cohort):
    g, _, variants, pheno, cov = cohort
    result = _scan(g, variants, pheno, cov, multivariate=False)
    assert list(result.multivariate.columns) == list(MULTIVARIATE_COLUMNS) and result.multivariate.empty
    assert result.summary()["n_multivariate"] == 0 and len(result.minp) == M


def test_inverse_normal_transform_is_blom_with_averaged_ties():
    rng = np.random.default_rng(4)
    y = np.column_stack([rng.exponential(size=50), rng.integers(0, 4, 50).astype(float)])  # col 1: ties
    expected = stats.norm.ppf((stats.rankdata(y, axis=0) - 0.375) / (50 + 0.25))
    np.testing.assert_allclose(inverse_normal_transform(y), expected, rtol=1e-12)
    tied = inverse_normal_transform(y)[:, 1]
    assert len(np.unique(tied)) == len(np.unique(y[:, 1]))


def test_inverse_normal_option_scans_the_transformed_phenotypes(cohort):
    _, g, variants, pheno, cov = cohort
    skewed = np.exp(pheno)
    got = _scan(g, variants, skewed, cov, inverse_normal=True)
    transformed = pd.DataFrame(special.ndtri((stats.rankdata(skewed, axis=0) - 0.375) / (N + 0.25)),
                               index=pheno.index, columns=pheno.columns)
    want = _scan(g, variants, transformed, cov)
    pd.testing.assert_frame_equal(got.multivariate, want.multivariate, rtol=1e-10)
    pd.testing.assert_frame_equal(got.minp, want.minp, rtol=1e-10)
    assert got.summary()["options"]["inverse_normal"] is True


def test_merged_chromosome_scans_concatenate_the_joint_tests(cohort):
    _, g, variants, pheno, cov = cohort
    whole = _scan(g, variants, pheno, cov)
    cfg = GwasConfig(maf_min=0.0, call_rate_min=0.0, chunk_variants=16, dtype="float64")
    parts = [scan_associations(ArraySource(g, list(pheno.index), variants, chrom=c), pheno, cov, cfg)
             for c in (2, 7)]
    merged = merge_results(parts)
    pd.testing.assert_frame_equal(merged.multivariate, whole.multivariate, rtol=1e-10)
    assert merged.summary()["n_multivariate"] == M


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"multivariate": "yes"}, r"GwasConfig\.multivariate must be True or False, got 'yes'"),
    ({"inverse_normal": 1}, r"GwasConfig\.inverse_normal must be True or False, got 1"),
])
def test_invalid_options_are_refused(kwargs, message):
    with pytest.raises(UdipConfigError, match=message):
        GwasConfig(**kwargs)


def test_joint_test_has_power_when_the_signal_is_spread_over_dims():
    """A SNP explaining ~0.5% of each of 5 independent dims: each per-dim test is weak, the joint strong."""
    rng = np.random.default_rng(12)
    n, m = 1_500, 20
    iids = [f"S{k}" for k in range(n)]
    g = rng.binomial(2, 0.3, (n, m)).astype(float)
    cov = pd.DataFrame({"age": rng.normal(60, 8, n)}, index=iids)
    y = rng.standard_normal((n, 6))
    y[:, :5] += 0.14 * (g[:, [0]] - g[:, [0]].mean()) * np.array([1.0, -1.0, 1.0, 1.0, -1.0])
    variants = pd.DataFrame({"snp": [f"rs{k}" for k in range(m)], "chrom": 1, "pos_bp": np.arange(m) + 1,
                             "a1": "A", "a2": "G"})
    pheno = pd.DataFrame(y, index=iids, columns=[f"d{k}" for k in range(6)])
    result = _scan(g, variants, pheno, cov)
    joint_p = result.multivariate.set_index("snp").loc["rs0", "p"]
    min_p = result.minp.set_index("snp").loc["rs0", "p"]
    assert joint_p < 5e-8 < min_p and joint_p < min_p / 1e4


@pytest.fixture(scope="module")
def cli_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gwas_cli_joint")
    g, g_missing, variants, pheno, cov = _cohort(seed=3, n=150, m=30, n_dims=3)
    write_plink(root / "geno", list(pheno.index), g_missing, variants)
    write_plink2_table(root / "pheno.txt", pheno)
    write_plink2_table(root / "covar.txt", cov)
    return root, g_missing, pheno, cov


def _cli(root, out, *extra):
    return CliRunner().invoke(gwas_command, [
        "--bfile", str(root / "geno"), "--pheno", str(root / "pheno.txt"), "--covar", str(root / "covar.txt"),
        "--out", str(out), "--maf", "0.0", "--call-rate", "0.5", "--chunk-size", "8", "--threads", "1",
        "--no-sumstats", "--dtype", "float64", *extra])


def test_cli_writes_multivariate_tsv(cli_inputs):
    root, g, pheno, cov = cli_inputs
    result = _cli(root, root / "run")
    assert result.exit_code == 0, result.output
    joint = pd.read_csv(root / "run" / "multivariate.tsv", sep="\t")
    assert list(joint.columns) == list(MULTIVARIATE_COLUMNS) and len(joint) == 30
    assert set(joint["chrom"]) == {2, 7}
    _assert_matches(joint, _reference(g, pheno.to_numpy(), cov.to_numpy(), range(30)), rtol=1e-5)
    summary = json.loads((root / "run" / "summary.json").read_text())
    assert summary["n_multivariate"] == 30 and summary["files"]["multivariate"].endswith("multivariate.tsv")
    assert summary["options"]["multivariate"] is True and summary["options"]["inverse_normal"] is False


def test_cli_flags_skip_the_joint_test_and_transform_the_phenotypes(cli_inputs):
    root, *_ = cli_inputs
    result = _cli(root, root / "off", "--no-multivariate", "--inverse-normal")
    assert result.exit_code == 0, result.output
    assert not (root / "off" / "multivariate.tsv").exists() and (root / "off" / "minp.tsv").exists()
    options = json.loads((root / "off" / "summary.json").read_text())["options"]
    assert options["multivariate"] is False and options["inverse_normal"] is True
