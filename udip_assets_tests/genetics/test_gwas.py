"""GWAS engine against statsmodels OLS (complete rows, called rows, mean-imputed rows), float32 vs
float64, minP and hits against brute force, lambda GC, p-values in the far tail against mpmath, and
the errors raised by bad inputs."""

from __future__ import annotations

import warnings

import mpmath
import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from udip_assets.errors import CovariateError, GenotypeError, UdipConfigError
from udip_assets.genetics.clump import MINP_COLUMNS
from udip_assets.genetics.genotype_stream import ArraySource, GenotypeSource
from udip_assets.genetics.gwas import (
    HITS_COLUMNS,
    SUMSTATS_COLUMNS,
    GwasConfig,
    Residualizer,
    merge_results,
    p_to_abs_t,
    scan_associations,
    scan_phenotype_sets,
    t_to_neg_log10_p,
    t_to_p,
)

N, M, P = 400, 120, 3
CAUSAL = {5: 0, 40: 1, 41: 1, 90: 2}  # SNP -> dim it acts on


def _cohort(seed: int = 7, missing: float = 0.04):
    """Genotypes whose allele frequency follows pc1 and the centre (so they correlate with the
    covariates), covariates on very different scales, phenotypes with covariate and SNP effects."""
    rng = np.random.default_rng(seed)
    iids = [f"S{k:04d}" for k in range(N)]
    centre = rng.integers(0, 3, N)
    cov = pd.DataFrame({"age": rng.normal(62, 7, N), "sex": rng.integers(0, 2, N).astype(float),
                        "pc1": rng.standard_normal(N), "pc2": rng.standard_normal(N),
                        "centre=1": (centre == 1).astype(float), "centre=2": (centre == 2).astype(float)},
                       index=iids)
    base = rng.uniform(0.05, 0.5, M)
    shift = 0.12 * np.tanh(cov["pc1"].to_numpy())[:, None] + 0.05 * centre[:, None]
    freq = np.clip(base[None, :] + shift, 0.01, 0.95)
    g = rng.binomial(2, freq).astype(np.float64)
    g[:, 7] = 0  # monomorphic
    g[:, 8] = 0
    g[:3, 8] = 1  # rare: MAF 3 / 800
    y = 0.03 * cov[["age"]].to_numpy() + rng.standard_normal((N, P))
    y += cov[["sex", "pc1", "pc2", "centre=1"]].to_numpy() @ rng.normal(0, 0.5, (4, P))
    for snp, dim in CAUSAL.items():
        y[:, dim] += 0.9 * g[:, snp]
    g_missing = g.copy()
    g_missing[rng.random((N, M)) < missing] = np.nan
    g_missing[rng.random(N) < 0.3, 11] = np.nan  # low call rate
    variants = pd.DataFrame({"snp": [f"rs{k}" for k in range(M)], "chrom": np.where(np.arange(M) < 70, 4, 9),
                             "pos_bp": 10_000 * np.arange(M) + 1, "a1": "T", "a2": "C"})
    pheno = pd.DataFrame(y, index=iids, columns=[f"udip_{d:03d}" for d in range(P)])
    return g, g_missing, variants, pheno, cov


@pytest.fixture(scope="module")
def cohort():
    return _cohort()


def _ols(g: np.ndarray, y: np.ndarray, cov: np.ndarray) -> tuple[float, float, float, float]:
    x = sm.add_constant(np.column_stack([g, cov]), has_constant="add")
    fit = sm.OLS(y, x).fit()
    return fit.params[1], fit.bse[1], fit.tvalues[1], fit.pvalues[1]


def _reference(g: np.ndarray, pheno: pd.DataFrame, cov: pd.DataFrame, snps, mode: str) -> pd.DataFrame:
    """statsmodels OLS per SNP x dim: on called rows ('drop') or with mean-imputed calls."""
    rows = []
    for j in snps:
        gj = g[:, j].copy()
        called = ~np.isnan(gj)
        if mode == "mean_impute":
            gj[~called] = gj[called].mean()
            called[:] = True
        for d in range(pheno.shape[1]):
            beta, se, t, p = _ols(gj[called], pheno.to_numpy()[called, d], cov.to_numpy()[called])
            rows.append({"snp": f"rs{j}", "dim": d, "beta": beta, "se": se, "t": t, "p": p})
    return pd.DataFrame(rows)


def _scan(g, variants, pheno, cov, tmp_path=None, **cfg):
    options = {"maf_min": 0.0, "call_rate_min": 0.0, "chunk_variants": 32, "dtype": "float64"} | cfg
    path = tmp_path / "sumstats.parquet" if tmp_path is not None else None
    result = scan_associations(ArraySource(g, list(pheno.index), variants), pheno, cov, GwasConfig(**options),
                               sumstats_path=path)
    sumstats = pd.read_parquet(path) if path is not None else None
    return result, sumstats


def _assert_matches(got: pd.DataFrame, ref: pd.DataFrame, rtol: float = 1e-6) -> None:
    merged = ref.merge(got.astype({"snp": str}), on=["snp", "dim"], suffixes=("_ref", ""), validate="1:1")
    assert len(merged) == len(ref)
    for col in ("beta", "se", "t", "p"):
        np.testing.assert_allclose(merged[col], merged[f"{col}_ref"], rtol=rtol, err_msg=col)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_complete_data_equals_statsmodels_ols(tmp_path, cohort, dtype):
    g, _, variants, pheno, cov = cohort
    result, sumstats = _scan(g, variants, pheno, cov, tmp_path, dtype=dtype, keep_p=1.0)
    tested = [j for j in range(M) if j != 7]
    ref = _reference(g, pheno, cov, tested, "drop")
    _assert_matches(sumstats, ref)
    _assert_matches(result.hits, ref)  # keep_p = 1: every test is a hit, refined to float64
    assert list(sumstats.columns) == list(SUMSTATS_COLUMNS) and len(sumstats) == len(tested) * P
    assert result.n_variants == len(tested) and result.n_skipped["monomorphic"] == 1


def test_missing_calls_are_dropped_per_snp_exactly_as_ols_on_called_rows(tmp_path, cohort):
    _, g, variants, pheno, cov = cohort
    result, sumstats = _scan(g, variants, pheno, cov, tmp_path, missing="drop")
    snps = [0, 5, 11, 40, 41, 63, 90, 119]
    _assert_matches(sumstats, _reference(g, pheno, cov, snps, "drop"))
    assert np.isnan(g[:, snps]).any(axis=0).all()


def test_mean_imputation_equals_ols_on_imputed_dosages(tmp_path, cohort):
    _, g, variants, pheno, cov = cohort
    _, sumstats = _scan(g, variants, pheno, cov, tmp_path, missing="mean_impute")
    _assert_matches(sumstats, _reference(g, pheno, cov, [0, 5, 11, 40, 90, 119], "mean_impute"))


@pytest.mark.parametrize("missing", ["drop", "mean_impute"])
def test_float32_agrees_with_float64(tmp_path, cohort, missing):
    _, g, variants, pheno, cov = cohort
    r64, s64 = _scan(g, variants, pheno, cov, tmp_path, missing=missing, keep_p=1e-4)
    r32, s32 = _scan(g, variants, pheno, cov, tmp_path, missing=missing, keep_p=1e-4, dtype="float32")
    assert np.max(np.abs(s32["neg_log10_p"] - s64["neg_log10_p"])) <= 1e-4
    assert np.max(np.abs(s32["t"] / s64["t"] - 1)) < 1e-4
    assert len(r64.hits) > 0
    pd.testing.assert_frame_equal(r32.hits, r64.hits, rtol=1e-9)  # hits are recomputed in float64
    np.testing.assert_allclose(r32.lambda_gc, r64.lambda_gc, atol=1e-3)


def test_minp_is_the_bruteforce_minimum_over_dims(tmp_path, cohort):
    _, g, variants, pheno, cov = cohort
    result, sumstats = _scan(g, variants, pheno, cov, tmp_path, maf_min=0.01, call_rate_min=0.9)
    best = sumstats.loc[sumstats.groupby("snp", observed=True)["p"].idxmin()].astype({"snp": str})
    merged = result.minp.merge(best, on="snp", suffixes=("", "_bf"), validate="1:1")
    assert list(result.minp.columns) == list(MINP_COLUMNS) and len(merged) == len(result.minp) == len(best)
    np.testing.assert_allclose(merged["p"], merged["p_bf"], rtol=1e-12)
    assert (merged["dim"] == merged["dim_bf"]).all()
    np.testing.assert_allclose(merged[["beta", "se"]], merged[["beta_bf", "se_bf"]], rtol=1e-12)
    called = ~np.isnan(g)
    freq = np.nansum(g, axis=0) / called.sum(axis=0) / 2
    idx = merged["snp"].str[2:].astype(int).to_numpy()
    np.testing.assert_allclose(merged["maf"], np.minimum(freq, 1 - freq)[idx], rtol=1e-6)


def test_hits_are_exactly_the_tests_below_keep_p(tmp_path, cohort):
    _, g, variants, pheno, cov = cohort
    result, sumstats = _scan(g, variants, pheno, cov, tmp_path, keep_p=1e-3)
    expected = sumstats[sumstats["p"] < 1e-3].astype({"snp": str, "chrom": str, "a1": str, "a2": str})
    got = result.hits.merge(expected, on=["snp", "dim"], suffixes=("", "_all"), validate="1:1")
    assert list(result.hits.columns) == list(HITS_COLUMNS) and len(got) == len(result.hits) == len(expected)
    np.testing.assert_allclose(got["p"], got["p_all"], rtol=1e-12)
    found = set(zip(result.hits["snp"], result.hits["dim"], strict=True))
    assert {(f"rs{s}", d) for s, d in CAUSAL.items()} <= found


def test_filters_count_what_they_skip(cohort):
    _, g, variants, pheno, cov = cohort
    result, _ = _scan(g, variants, pheno, cov, maf_min=0.01, call_rate_min=0.9)
    called = ~np.isnan(g)
    rate = called.mean(axis=0)
    freq = np.nansum(g, axis=0) / called.sum(axis=0) / 2
    maf = np.minimum(freq, 1 - freq)
    low_call = rate < 0.9
    low_maf = ~low_call & (maf < 0.01)
    assert result.n_skipped["call_rate"] == low_call.sum() == 1
    assert result.n_skipped["maf"] == low_maf.sum() == 2  # the rare and the monomorphic SNP
    assert result.n_variants == M - 3 == len(result.minp)
    assert not {"rs7", "rs8", "rs11"} & set(result.minp["snp"])


def test_lambda_gc_equals_the_median_chi2_of_all_tests(tmp_path, cohort):
    _, g, variants, pheno, cov = cohort
    result, sumstats = _scan(g, variants, pheno, cov, tmp_path)
    for d in range(P):
        p = sumstats.loc[sumstats["dim"] == d, "p"].to_numpy()
        expected = np.median(stats.chi2.isf(p, 1)) / stats.chi2.ppf(0.5, 1)
        assert result.lambda_gc[d] == pytest.approx(expected, abs=1e-3)


def test_merged_chromosome_scans_equal_one_scan(cohort):
    _, g, variants, pheno, cov = cohort
    cfg = GwasConfig(maf_min=0.0, call_rate_min=0.0, chunk_variants=50, dtype="float64")
    whole = scan_associations(ArraySource(g, list(pheno.index), variants), pheno, cov, cfg)
    parts = [scan_associations(ArraySource(g, list(pheno.index), variants, chrom=c), pheno, cov, cfg)
             for c in (4, 9)]
    merged = merge_results(parts)
    pd.testing.assert_frame_equal(merged.minp, whole.minp, rtol=1e-10)
    np.testing.assert_array_equal(merged.t_histogram, whole.t_histogram)
    np.testing.assert_allclose(merged.lambda_gc, whole.lambda_gc)
    assert merged.n_variants == whole.n_variants and merged.n_skipped == whole.n_skipped


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_phenotype_sets_in_one_pass_equal_their_own_scans(cohort, dtype):
    """The sweep's path: K phenotype sets of the same samples in one pass give each set's own scan:
    its minP (over its own dims), hits, |t| histogram and lambda GC, with missing calls dropped."""
    _, g, variants, pheno, cov = cohort
    rng = np.random.default_rng(3)
    second = pheno.iloc[:, [2, 0]].set_axis(["a", "b"], axis=1) + rng.normal(0, 0.5, (N, 2))
    sets = {"first": pheno, "second": second}
    cfg = GwasConfig(maf_min=0.0, call_rate_min=0.0, chunk_variants=32, dtype=dtype, keep_p=1e-2)
    both = scan_phenotype_sets(ArraySource(g, list(pheno.index), variants), sets, cov, cfg)
    rtol = 1e-6 if dtype == "float64" else 1e-4  # float32: the wider product rounds otherwise (~1e-6 on t)
    for name, frame in sets.items():
        alone = scan_associations(ArraySource(g, list(pheno.index), variants), frame, cov,
                                  GwasConfig(**{**cfg.__dict__, "multivariate": False}))
        got = both[name]
        assert got.dims == alone.dims and got.n_dims == frame.shape[1] and got.n_variants == alone.n_variants
        pd.testing.assert_frame_equal(got.minp, alone.minp, rtol=rtol)
        assert len(alone.hits) > 0
        pd.testing.assert_frame_equal(got.hits, alone.hits, rtol=rtol)
        np.testing.assert_array_equal(got.t_histogram, alone.t_histogram)
        np.testing.assert_allclose(got.lambda_gc, alone.lambda_gc)
    with pytest.raises(Exception, match="must share one IID index"):
        scan_phenotype_sets(ArraySource(g, list(pheno.index), variants),
                            {"first": pheno, "shuffled": second.iloc[::-1]}, cov, cfg)


def test_sumstats_rows_are_snp_major_and_typed(tmp_path, cohort):
    g, _, variants, pheno, cov = cohort
    _, sumstats = _scan(g[:, :10], variants.iloc[:10], pheno, cov, tmp_path)
    assert sumstats["snp"].astype(str).tolist()[:4] == ["rs0", "rs0", "rs0", "rs1"]
    assert sumstats["dim"].tolist()[:4] == [0, 1, 2, 0]
    assert str(sumstats["pos_bp"].dtype) == "int64"
    assert sumstats["chrom"].astype(str).unique().tolist() == ["4"]
    np.testing.assert_allclose(sumstats["neg_log10_p"], -np.log10(sumstats["p"]), rtol=1e-12)


class _FailingSource(ArraySource):
    def read_chunk(self, start, stop):
        if start > 0:
            raise GenotypeError("disk error while reading chunk 2")
        return super().read_chunk(start, stop)


def test_failed_scan_leaves_no_parquet(tmp_path, cohort):
    g, _, variants, pheno, cov = cohort
    path = tmp_path / "chrom=4" / "sumstats.parquet"
    source = _FailingSource(g, list(pheno.index), variants)
    with pytest.raises(GenotypeError, match="disk error while reading chunk 2"):
        scan_associations(source, pheno, cov, GwasConfig(chunk_variants=16, maf_min=0), sumstats_path=path)
    assert list(path.parent.iterdir()) == []


def test_constant_and_collinear_covariates_are_dropped_by_name(cohort):
    g, _, variants, pheno, cov = cohort
    bad = cov.assign(batch=1.0, age_months=cov["age"] * 12.0, pc_sum=cov["pc1"] + 2 * cov["pc2"])
    expected = (r"'batch': 'constant', 'age_months': 'collinear with age', "
                r"'pc_sum': 'collinear with pc1 \+ pc2'")
    with pytest.warns(UserWarning, match=expected):
        dropped = scan_associations(ArraySource(g, list(pheno.index), variants), pheno, bad,
                                    GwasConfig(maf_min=0, call_rate_min=0))
    clean = scan_associations(ArraySource(g, list(pheno.index), variants), pheno, cov,
                              GwasConfig(maf_min=0, call_rate_min=0))
    pd.testing.assert_frame_equal(dropped.minp, clean.minp, rtol=1e-8)
    assert dropped.covariates_used == tuple(cov.columns)
    assert set(dropped.covariates_dropped) == {"batch", "age_months", "pc_sum"}


def test_residualizer_is_an_orthonormal_basis_of_the_covariates(cohort):
    *_, cov = cohort
    res = Residualizer(cov)
    np.testing.assert_allclose(res.q.T @ res.q, np.eye(cov.shape[1] + 1), atol=1e-12)
    x = np.column_stack([np.ones(N), cov.to_numpy()])
    y = np.random.default_rng(0).standard_normal((N, 2))
    expected = y - x @ np.linalg.lstsq(x, y, rcond=None)[0]
    np.testing.assert_allclose(res.transform(y), expected, atol=1e-10)
    assert res.dof(N) == N - cov.shape[1] - 2


def test_nothing_sane_left_in_the_covariates_is_refused(cohort):
    g, _, variants, pheno, cov = cohort
    junk = pd.DataFrame({"one": 1.0, "two": 2.0}, index=cov.index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CovariateError, match=r"every covariate column is constant or collinear .*'one': "
                                                 r"'constant'.*nothing sane remains"):
            scan_associations(ArraySource(g, list(pheno.index), variants), pheno, junk)


def test_nan_phenotype_names_column_and_subjects(cohort):
    g, _, variants, pheno, cov = cohort
    bad = pheno.copy()
    bad.iloc[[3, 17], 1] = np.nan
    expected = (r"phenotype column\(s\) \['udip_001'\] hold NaN or infinite values for 2 subject\(s\) "
                r"\['S0003', 'S0017'\]")
    with pytest.raises(CovariateError, match=expected):
        scan_associations(ArraySource(g, list(pheno.index), variants), bad, cov)


def test_nan_covariate_names_column_and_subjects(cohort):
    g, _, variants, pheno, cov = cohort
    bad = cov.copy()
    bad.iloc[9, 0] = np.nan
    with pytest.raises(CovariateError, match=r"covariate column\(s\) \['age'\] hold NaN .* \['S0009'\]"):
        scan_associations(ArraySource(g, list(pheno.index), variants), pheno, bad)


def test_iid_mismatches_are_listed(cohort):
    g, _, variants, pheno, cov = cohort
    expected = r"2 of 400 phenotyped IIDs have no covariate row: \['S0000', 'S0001'\]"
    with pytest.raises(CovariateError, match=expected):
        scan_associations(ArraySource(g, list(pheno.index), variants), pheno, cov.iloc[2:])
    renamed = pheno.rename(index={"S0005": "X5", "S0006": "X6"})
    cov2 = cov.rename(index={"S0005": "X5", "S0006": "X6"})
    with pytest.raises(GenotypeError, match=r"2 of 400 sample IIDs are not in <array>: \['X5', 'X6'\]"):
        scan_associations(ArraySource(g, list(pheno.index), variants), renamed, cov2)


def test_phenotype_explained_by_covariates_is_refused(cohort):
    g, _, variants, pheno, cov = cohort
    bad = pheno.assign(udip_001=2.0 * cov["pc1"] - 1.0)
    expected = r"\['udip_001'\] are constant or fully explained by the covariates"
    with pytest.raises(CovariateError, match=expected):
        scan_associations(ArraySource(g, list(pheno.index), variants), bad, cov)


def test_snp_whose_missing_calls_empty_a_covariate_level_is_skipped(cohort):
    g, _, variants, pheno, cov = cohort
    g = g[:, :4].copy()
    g[cov["centre=2"].to_numpy() == 1, 2] = np.nan  # on its called rows, centre=2 is all zero
    result, _ = _scan(g, variants.iloc[:4], pheno, cov)
    assert result.n_skipped["singular"] == 1 and "rs2" not in set(result.minp["snp"])


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"missing": "impute"}, r"GwasConfig\.missing must be one of \('drop', 'mean_impute'\), got 'impute'"),
    ({"maf_min": 0.5}, r"GwasConfig\.maf_min must be in \[0, 0\.5\), got 0\.5"),
    ({"call_rate_min": 1.5}, r"GwasConfig\.call_rate_min must be in \[0, 1\], got 1\.5"),
    ({"chunk_variants": 0}, r"GwasConfig\.chunk_variants must be an integer >= 1, got 0"),
    ({"dtype": "float16"}, r"GwasConfig\.dtype must be one of \('float32', 'float64'\), got 'float16'"),
    ({"keep_p": 0.0}, r"GwasConfig\.keep_p must be in \(0, 1\], got 0\.0"),
    ({"threads": 0}, r"GwasConfig\.threads must be None or an integer >= 1, got 0"),
])
def test_invalid_config_is_refused(kwargs, message):
    with pytest.raises(UdipConfigError, match=message):
        GwasConfig(**kwargs)


@pytest.mark.parametrize(("t", "df"), [(200.0, 300.0), (80.0, 5_000.0), (1e15, 20.0), (45.0, 500_000.0),
                                       (40.0, 22_000.0), (300.0, 22_000.0)])
def test_neg_log10_p_is_exact_where_p_underflows(t, df):
    mpmath.mp.dps = 60
    x = mpmath.mpf(df) / (mpmath.mpf(df) + mpmath.mpf(t) ** 2)
    p = mpmath.betainc(mpmath.mpf(df) / 2, mpmath.mpf(1) / 2, 0, x, regularized=True)
    expected = float(-mpmath.log10(p))
    assert expected > 280
    assert t_to_neg_log10_p(np.array([t]), df)[0] == pytest.approx(expected, rel=1e-10)


def test_neg_log10_p_log_space_branch_joins_the_direct_one():
    df = 1_000.0
    t = p_to_abs_t(np.array([1e-200, 1e-250, 1e-275]), df)
    direct = -np.log10(t_to_p(t, df))
    from udip_assets.genetics import pvalues

    old = pvalues._LOG_SPACE_BELOW_P
    pvalues._LOG_SPACE_BELOW_P = 1.0  # force the continued fraction everywhere
    try:
        np.testing.assert_allclose(t_to_neg_log10_p(t, df), direct, rtol=1e-11)
    finally:
        pvalues._LOG_SPACE_BELOW_P = old


def test_generic_source_contract(cohort):
    g, _, variants, pheno, _ = cohort
    source = ArraySource(g, list(pheno.index), variants)
    assert isinstance(source, GenotypeSource)
    assert [c.start for c in source.chunks(50, prefetch_depth=0)] == [0, 50, 100]


@pytest.mark.parametrize("df", [5.0, 37.0, 981.0, 4_981.0, 1e6])
def test_p_value_tables_equal_the_incomplete_beta(df):
    """The sumstats' interpolated p and -log10 p against scipy's incomplete beta, over the whole range."""
    from udip_assets.genetics.pvalues import PValueTables as _PValueTables

    rng = np.random.default_rng(int(df) % 1000)
    # past both the table's end (|t| 64) and p = 1e-250
    t_max = min(abs(float(np.nan_to_num(p_to_abs_t(1e-300, df), nan=200.0))), 200.0)
    t = np.concatenate([rng.uniform(-t_max, t_max, 14_000), rng.standard_normal(14_000) * 3,
                        [0.0, 1e-12, np.inf, -np.inf, np.nan, t_max, 2 * t_max]]).reshape(-1, 7)
    p, nl = _PValueTables().p_and_neg_log10_p(t, np.full(len(t), df))
    p_ref = t_to_p(t, df)
    nl_ref = t_to_neg_log10_p(t, df)
    finite = np.isfinite(t)
    np.testing.assert_allclose(p[finite], p_ref[finite], rtol=1e-10, atol=0)
    np.testing.assert_allclose(nl[finite], nl_ref[finite], rtol=1e-11, atol=1e-11)
    assert np.array_equal(np.isnan(p), np.isnan(p_ref)) and np.array_equal(np.isnan(nl), np.isnan(nl_ref))


def test_p_value_tables_follow_each_rows_df():
    from udip_assets.genetics.pvalues import PValueTables as _PValueTables

    rng = np.random.default_rng(3)
    df = rng.choice([4_950.0, 4_960.0, 4_981.0, 12.0], 300)
    t = rng.standard_normal((300, 16)) * 4
    p, nl = _PValueTables().p_and_neg_log10_p(t, df)
    np.testing.assert_allclose(p, t_to_p(t, df[:, None]), rtol=1e-10)
    np.testing.assert_allclose(nl, t_to_neg_log10_p(t, df[:, None]), rtol=1e-11, atol=1e-11)


def test_device_product_through_torch_equals_the_blas_product():
    """The GPU path's product object, run on torch's CPU device here: ``g @ [Y_res | Q]`` as numpy
    computes it, to float32 rounding, for a chunk whose columns are not contiguous."""
    from udip_assets.genetics.ols_kernel import DeviceProduct

    rng = np.random.default_rng(2)
    rhs = rng.standard_normal((300, 11)).astype(np.float32)
    g = np.asfortranarray(rng.integers(0, 3, (64, 300)).astype(np.float32))
    got = DeviceProduct(rhs, "cpu")(g)
    assert got.dtype == np.float64 and got.shape == (64, 11)
    np.testing.assert_allclose(got, g.astype(np.float64) @ rhs.astype(np.float64), rtol=1e-5, atol=1e-4)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_a_cuda_device_that_is_absent_is_named(cohort):
    _, g, variants, pheno, cov = cohort
    with pytest.raises(UdipConfigError, match=r"GwasConfig\.device is 'cuda' but torch sees no CUDA device .*"
                                              r"run on a GPU node or use device='cpu'"):
        _scan(g, variants, pheno, cov, device="cuda")
    with pytest.raises(UdipConfigError, match=r"GwasConfig\.device must be 'cpu' or a CUDA device"):
        GwasConfig(device="gpu")


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("missing", ["drop", "mean_impute"])
def test_cuda_products_give_the_cpu_results(tmp_path, cohort, missing):
    _, g, variants, pheno, cov = cohort
    cpu, s_cpu = _scan(g, variants, pheno, cov, tmp_path, missing=missing, keep_p=1e-4, dtype="float32")
    gpu, s_gpu = _scan(g, variants, pheno, cov, tmp_path, missing=missing, keep_p=1e-4, dtype="float32",
                       device="cuda")
    assert np.max(np.abs(s_gpu["neg_log10_p"] - s_cpu["neg_log10_p"])) <= 1e-4
    pd.testing.assert_frame_equal(gpu.hits, cpu.hits, rtol=1e-9)  # hits are refitted in float64 on the CPU
    pd.testing.assert_frame_equal(gpu.multivariate, cpu.multivariate, rtol=1e-4)
