"""GWAS assets: per-chromosome summary statistics, then the cohort's minP table.

``gwas_sumstats`` is partitioned by cohort x chromosome, so a backfill runs chromosomes in
parallel; each partition streams its SNPs through the engine, writes the full statistics to
Parquet (``artifacts/gwas/cohort=*/model_id=*/chrom=*/sumstats.parquet``, queryable as the DuckDB
view ``gwas_sumstats``) and the hits below ``keep_p`` to ``gwas_hits``. ``minp_sumstats`` gathers
every chromosome of a cohort into ``minp`` with genome-wide lambda GC, a Manhattan and a QQ plot.
"""

import json
import time
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from scipy import stats

from udip_assets.cohort.gwas_inputs import gwas_sample
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.partitions import chrom_partitions, cohort_chrom_partitions, cohort_partitions
from udip_assets.defs.resources import UdipHome, latest_model_id
from udip_assets.genetics.design import PAPER_CATEGORICAL, PAPER_NUMERIC, CovariateSpec
from udip_assets.genetics.genotype_stream import PlinkSource
from udip_assets.genetics.gwas import GwasConfig, scan_associations
from udip_assets.genetics.plink import read_bim
from udip_assets.store.schema import GWAS_HITS, MINP
from udip_assets.store.warehouse import connect

CHI2_MEDIAN_1DF = stats.chi2.ppf(0.5, 1)


class GwasAssetConfig(dg.Config):
    """Mirrors :class:`udip_assets.genetics.gwas.GwasConfig` plus the covariates and the keep threshold."""

    numeric_covariates: list[str] = list(PAPER_NUMERIC)
    categorical_covariates: list[str] = list(PAPER_CATEGORICAL)
    missing: str = GwasConfig().missing
    maf_min: float = GwasConfig().maf_min
    call_rate_min: float = GwasConfig().call_rate_min
    chunk_variants: int = GwasConfig().chunk_variants
    dtype: str = GwasConfig().dtype
    keep_p: float = GwasConfig().keep_p
    split: str = "inference"

    def covariate_spec(self) -> CovariateSpec:
        return CovariateSpec(numeric=tuple(self.numeric_covariates), categorical=tuple(self.categorical_covariates))

    def to_domain(self) -> GwasConfig:
        return GwasConfig(missing=self.missing, maf_min=self.maf_min, call_rate_min=self.call_rate_min,
                          chunk_variants=self.chunk_variants, dtype=self.dtype, keep_p=self.keep_p)


def gwas_dir(home: UdipHome, cohort: str, model_id: str, chrom: str) -> Path:
    """Hive-style folder of one chromosome's outputs, so DuckDB reads cohort/model_id/chrom as columns."""
    return home.artifacts("gwas", f"cohort={cohort}", f"model_id={model_id}", f"chrom={chrom}")


@dg.asset(partitions_def=cohort_chrom_partitions, group_name="gwas", deps=["udip_embeddings"],
          kinds={"parquet", "duckdb"})
def gwas_sumstats(context: dg.AssetExecutionContext, config: GwasAssetConfig, home: UdipHome) -> dg.MaterializeResult:
    """Every SNP of one chromosome x every UDIP dim: beta, se, t, p (exact OLS with covariates)."""
    keys = context.partition_key.keys_by_dimension
    cohort, chrom = keys["cohort"], keys["chrom"]
    spec = load_cohort(home.cohort_dir(cohort))
    model_id = latest_model_id(context, "udip_embeddings", cohort)
    sample = gwas_sample(
        home.query("SELECT * FROM subjects WHERE cohort = ?", [cohort]),
        home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ?", [cohort, model_id]),
        config.covariate_spec(), split=config.split)
    out = gwas_dir(home, cohort, model_id, chrom)
    started = time.perf_counter()
    source = PlinkSource(spec.genotypes, sample_iids=list(sample.phenotypes.index), chrom=chrom)
    result = scan_associations(source, sample.phenotypes, sample.covariates, config.to_domain(),
                               sumstats_path=out / "sumstats.parquet")
    result.minp.to_parquet(out / "minp.parquet.tmp", index=False)
    (out / "minp.parquet.tmp").replace(out / "minp.parquet")
    part = {"cohort": cohort, "model_id": model_id, "chrom": chrom}
    home.write(GWAS_HITS, result.hits.assign(**part), **part)
    _register_sumstats_view(home)
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "n_subjects": result.n_samples, "n_variants": result.n_variants,
        "n_dims": sample.phenotypes.shape[1], "n_covariates": sample.covariates.shape[1],
        "covariates": dg.MetadataValue.json(list(sample.covariates.columns)),
        "excluded_subjects": dg.MetadataValue.json(sample.n_excluded),
        "n_hits": len(result.hits), "seconds": round(time.perf_counter() - started, 2),
        "sumstats": dg.MetadataValue.path(str(out / "sumstats.parquet")),
        "config": dg.MetadataValue.json(config.model_dump())})


def _register_sumstats_view(home: UdipHome) -> None:
    """(Re)create the view ``gwas_sumstats`` over every chromosome's Parquet file."""
    pattern = str(home.root() / "artifacts" / "gwas" / "*" / "*" / "*" / "sumstats.parquet")
    with connect(home.warehouse_path()) as con:
        con.execute("CREATE OR REPLACE VIEW gwas_sumstats AS SELECT * FROM "
                    f"read_parquet('{pattern}', hive_partitioning = true, union_by_name = true)")


class MinpConfig(dg.Config):
    """Genome-wide significance of the minP (default 5e-8 / 128 UDIP dims)."""

    sig_p: float = 5e-8 / 128


@dg.asset(partitions_def=cohort_partitions, group_name="gwas", kinds={"duckdb"},
          deps=[dg.AssetDep("gwas_sumstats", partition_mapping=dg.MultiToSingleDimensionPartitionMapping(
              partition_dimension_name="cohort"))])
def minp_sumstats(context: dg.AssetExecutionContext, config: MinpConfig, home: UdipHome) -> dg.MaterializeResult:
    """Minimum p over the UDIP dims per SNP, all chromosomes of the cohort; lambda GC per dim; plots."""
    cohort = context.partition_key
    model_id = latest_model_id(context, "udip_embeddings", cohort)
    base = home.root() / "artifacts" / "gwas" / f"cohort={cohort}" / f"model_id={model_id}"
    files = sorted(base.glob("chrom=*/minp.parquet"))
    if not files:
        raise dg.Failure(f"no GWAS results under {base}; materialize gwas_sumstats for cohort {cohort} first")
    minp = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    minp["chrom"] = minp["chrom"].astype(str)
    minp["significant"] = minp["p"] <= config.sig_p
    home.write(MINP, minp.assign(cohort=cohort, model_id=model_id), cohort=cohort, model_id=model_id)
    lambdas = _lambda_gc(home, base)
    out = home.artifacts("gwas_reports", cohort, model_id)
    from udip_assets.genetics.gwas_plots import manhattan_figure, qq_figure

    fuma = out / "minp_fuma.tsv"
    _fuma_table(minp).to_csv(fuma, sep="\t", index=False)
    manhattan_figure(minp, out / "manhattan.png", sig_p=config.sig_p)
    qq_figure(minp["p"].to_numpy(), out / "qq.png")
    (out / "lambda_gc.json").write_text(json.dumps({"lambda_gc": lambdas.tolist()}))
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "n_snps": len(minp), "n_significant": int(minp["significant"].sum()),
        "n_chromosomes": len(files), "sig_p": config.sig_p,
        "lambda_gc_min": float(np.nanmin(lambdas)), "lambda_gc_median": float(np.nanmedian(lambdas)),
        "lambda_gc_max": float(np.nanmax(lambdas)),
        "manhattan": dg.MetadataValue.path(str(out / "manhattan.png")),
        "fuma_minp": dg.MetadataValue.path(str(fuma))})


def _lambda_gc(home: UdipHome, base: Path) -> np.ndarray:
    """Genome-wide lambda GC per dim: chi2(1) quantile of each dim's median p over 0.4549.

    Notes
    -----
    The chi2 quantile is monotone in p, so the median chi2 is the quantile of the median p; the
    median is taken by DuckDB over the Parquet files, never loading the statistics into memory.
    """
    pattern = str(base / "chrom=*" / "sumstats.parquet")
    with connect(home.warehouse_path(), read_only=False) as con:
        med = con.execute(f"SELECT dim, median(p) AS p FROM read_parquet('{pattern}') GROUP BY dim ORDER BY dim").df()
    return stats.chi2.isf(med["p"].to_numpy(np.float64), 1) / CHI2_MEDIAN_1DF


def _fuma_table(minp: pd.DataFrame) -> pd.DataFrame:
    """FUMA's upload columns (SNP, CHR, BP, A1, A2, P) plus the dim, beta and SE of the minimum."""
    return pd.DataFrame({"SNP": minp["snp"], "CHR": minp["chrom"], "BP": minp["pos_bp"], "A1": minp["a1"],
                         "A2": minp["a2"], "P": minp["p"], "dim": minp["dim"], "BETA": minp["beta"],
                         "SE": minp["se"]})


def cohort_chromosomes(home: UdipHome, cohort: str) -> list[str]:
    """Chromosomes present in the cohort's genotypes that are also partitions of ``gwas_sumstats``."""
    spec = load_cohort(home.cohort_dir(cohort))
    present = set(read_bim(spec.genotypes.with_name(spec.genotypes.name + ".bim"))["chrom"].astype(str))
    return [c for c in chrom_partitions.get_partition_keys() if c in present]


gwas_assets = [gwas_sumstats, minp_sumstats]
