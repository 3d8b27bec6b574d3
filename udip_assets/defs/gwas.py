"""GWAS assets: per-chromosome summary statistics, then the cohort's minP and joint-test tables.

``gwas_sumstats`` is partitioned by cohort x chromosome, so a backfill runs chromosomes in
parallel; each partition tests the UDIPs of the model its ``udip_embeddings`` input names,
streams its SNPs through the engine, writes the full statistics to Parquet
(``artifacts/gwas/cohort=*/model_id=*/chrom=*/sumstats.parquet``, queryable as the DuckDB view
``gwas_sumstats``) and the hits below ``keep_p`` to ``gwas_hits``. ``minp_sumstats`` and
``multivariate_sumstats`` gather every chromosome of a cohort (all of one model, or the run fails
naming the chromosomes to re-run) into ``minp`` with genome-wide lambda GC, a Manhattan and a QQ
plot, and into ``multivariate``.
"""

import json
import time
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from udip_assets.atomic import write_text_atomic, write_tsv_atomic
from udip_assets.cohort.gwas_inputs import gwas_sample
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.compute import CPU_STEP, Compute, step_tags
from udip_assets.defs.lineage import LINEAGE_IO, ModelRef, one_model
from udip_assets.defs.metadata import figure, table_metadata
from udip_assets.defs.partitions import cohort_chrom_partitions, cohort_partitions, genotyped_chromosomes
from udip_assets.defs.resources import UdipHome
from udip_assets.genetics.clump import genome_wide_threshold
from udip_assets.genetics.design import PAPER_CATEGORICAL, PAPER_NUMERIC, CovariateSpec
from udip_assets.genetics.gwas import GwasConfig, fuma_minp_table, lambda_from_histogram
from udip_assets.genetics.gwas_partition import write_partition_inputs
from udip_assets.store.schema import GWAS_HITS, MINP, MULTIVARIATE
from udip_assets.store.warehouse import connect


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
    multivariate: bool = GwasConfig().multivariate
    inverse_normal: bool = GwasConfig().inverse_normal
    device: str = GwasConfig().device
    split: str = "inference"

    def covariate_spec(self) -> CovariateSpec:
        return CovariateSpec(numeric=tuple(self.numeric_covariates), categorical=tuple(self.categorical_covariates))

    def to_domain(self) -> GwasConfig:
        return GwasConfig(missing=self.missing, maf_min=self.maf_min, call_rate_min=self.call_rate_min,
                          chunk_variants=self.chunk_variants, dtype=self.dtype, keep_p=self.keep_p,
                          multivariate=self.multivariate, inverse_normal=self.inverse_normal, device=self.device)


def model_gwas_dir(home: UdipHome, cohort: str, model_id: str) -> Path:
    """Folder of one model's GWAS (its chromosomes, and ``samples.txt``, the subjects tested)."""
    return home.root() / "artifacts" / "gwas" / f"cohort={cohort}" / f"model_id={model_id}"


def gwas_dir(home: UdipHome, cohort: str, model_id: str, chrom: str) -> Path:
    """Hive-style folder of one chromosome's outputs, so DuckDB reads cohort/model_id/chrom as columns."""
    return home.artifacts("gwas", f"cohort={cohort}", f"model_id={model_id}", f"chrom={chrom}")


def _gather_chromosomes(home: UdipHome, chromosomes: list[ModelRef], cohort: str,
                        name: str) -> tuple[ModelRef, pd.DataFrame, list[Path]]:
    """The one model of ``chromosomes`` (gwas_sumstats outputs) and their ``<name>.parquet`` concatenated.

    Only the chromosomes the cohort's genotypes hold count (another cohort's chromosomes are
    partitions too, recorded as not genotyped); each of them must have been tested.
    """
    genotyped = cohort_chromosomes(home, cohort)
    chromosomes = [ref for ref in chromosomes if str(ref.chrom) in genotyped]
    model = one_model(chromosomes, cohort)
    untested = [c for c in genotyped if c not in {str(ref.chrom) for ref in chromosomes}]
    if untested:
        raise dg.Failure(f"cohort {cohort}: gwas_sumstats has not been materialized for genotyped chromosome(s) "
                         f"{', '.join(untested)}; materialize those partitions ({cohort}|chrom) first")
    files = [gwas_dir(home, cohort, model.model_id, str(ref.chrom)) / f"{name}.parquet" for ref in chromosomes]
    missing = [f for f in files if not f.exists()]
    if missing:
        raise dg.Failure(f"{missing[0]} is missing although gwas_sumstats reported it; re-materialize "
                         f"gwas_sumstats for cohort {cohort}")
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    return model, table.assign(chrom=table["chrom"].astype(str)), files


_BY_COHORT = dg.MultiToSingleDimensionPartitionMapping(partition_dimension_name="cohort")


@dg.asset(partitions_def=cohort_chrom_partitions, group_name="gwas",
          ins={"udips": dg.AssetIn("udip_embeddings", partition_mapping=_BY_COHORT)},
          kinds={"parquet", "duckdb"}, io_manager_key=LINEAGE_IO, op_tags=step_tags(CPU_STEP))
def gwas_sumstats(context: dg.AssetExecutionContext, config: GwasAssetConfig, home: UdipHome, compute: Compute,
                  udips: ModelRef) -> dg.Output[ModelRef]:
    """Every SNP of one chromosome x every UDIP dim: beta, se, t, p (exact OLS with covariates)."""
    keys = context.partition_key.keys_by_dimension
    cohort, chrom = keys["cohort"], keys["chrom"]
    spec = load_cohort(home.cohort_dir(cohort))
    model_id = udips.model_id
    if chrom not in genotyped_chromosomes(spec):
        # a chromosome of another cohort (the partitions are a product): nothing to test, nothing written
        context.log.info(f"cohort {cohort} has no chromosome {chrom} in {spec.genotypes}.bim; nothing to test")
        return dg.Output(replace(udips, chrom=chrom), metadata={"genotyped": False, "n_variants": 0})
    sample = gwas_sample(
        home.query("SELECT * FROM subjects WHERE cohort = ?", [cohort]),
        home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ?", [cohort, model_id]),
        config.covariate_spec(), split=config.split)
    out = gwas_dir(home, cohort, model_id, chrom)
    started = time.perf_counter()
    # files in, files out: the same worker runs here or as a cluster job (compute); only this step
    # writes the warehouse
    write_partition_inputs(out, sample.phenotypes, sample.covariates, config.to_domain())
    summary, where = compute.run_gwas_partition(context, out, spec.genotypes, chrom,
                                                job_name=f"udip-gwas-{cohort}-chr{chrom}")
    # the GWAS sample (config.split): the loci's LD is computed over exactly these subjects
    write_text_atomic(out.parent / "samples.txt", "\n".join(sample.phenotypes.index) + "\n")
    part = {"cohort": cohort, "model_id": model_id, "chrom": chrom}
    hits = pd.read_parquet(out / "hits.parquet")
    home.write(GWAS_HITS, hits.assign(**part), **part)
    _register_sumstats_view(home)
    ref = ModelRef(cohort=cohort, model_id=model_id, run_id=udips.run_id, n_dims=sample.phenotypes.shape[1],
                   chrom=chrom)
    return dg.Output(ref, metadata={
        "n_subjects": summary["n_subjects"], "n_variants": summary["n_variants"],
        "n_dims": sample.phenotypes.shape[1], "n_covariates": sample.covariates.shape[1],
        "covariates": dg.MetadataValue.json(list(sample.covariates.columns)),
        "excluded_subjects": dg.MetadataValue.json(sample.n_excluded),
        "n_hits": len(hits), "n_skipped": dg.MetadataValue.json(summary["n_skipped"]),
        "seconds": round(time.perf_counter() - started, 2), **where,
        "sumstats": dg.MetadataValue.path(str(out / "sumstats.parquet")),
        "config": dg.MetadataValue.json(config.model_dump())})


def _register_sumstats_view(home: UdipHome) -> None:
    """(Re)create the view ``gwas_sumstats`` over every chromosome's Parquet file."""
    pattern = str(home.root() / "artifacts" / "gwas" / "*" / "*" / "*" / "sumstats.parquet")
    literal = "'" + pattern.replace("'", "''") + "'"  # a home path may hold quotes and spaces
    with connect(home.warehouse_path()) as con:
        con.execute("CREATE OR REPLACE VIEW gwas_sumstats AS SELECT * FROM "
                    f"read_parquet({literal}, hive_partitioning = true, union_by_name = true)")


class MultivariateConfig(dg.Config):
    """Genome-wide significance of the joint test of all dims (one test per SNP: 5e-8)."""

    sig_p: float = 5e-8


_CHROMOSOMES = {"chromosomes": dg.AssetIn("gwas_sumstats", partition_mapping=_BY_COHORT)}


@dg.asset(partitions_def=cohort_partitions, group_name="gwas", kinds={"duckdb"}, ins=_CHROMOSOMES,
          io_manager_key=LINEAGE_IO)
def multivariate_sumstats(context: dg.AssetExecutionContext, config: MultivariateConfig, home: UdipHome,
                          chromosomes: list[ModelRef]) -> dg.Output[ModelRef]:
    """The exact joint F-test of all UDIP dims per SNP (MOSTest's question), all chromosomes of the cohort."""
    cohort = context.partition_key
    model, table, _ = _gather_chromosomes(home, chromosomes, cohort, "multivariate")
    model_id = model.model_id
    table["significant"] = table["p"] <= config.sig_p
    home.write(MULTIVARIATE, table.assign(cohort=cohort, model_id=model_id), cohort=cohort, model_id=model_id)
    out = home.artifacts("gwas_reports", cohort, model_id)
    tsv = write_tsv_atomic(table.drop(columns=["significant"]), out / "multivariate.tsv")
    from udip_assets.genetics.gwas_plots import manhattan_figure

    manhattan_figure(table.assign(dim=0), out / "manhattan_multivariate.png", sig_p=config.sig_p, n_dims=1,
                     title=f"joint test of all UDIP dims, cohort {cohort}")
    return dg.Output(replace(model, chrom=None), metadata={
        "n_snps": len(table), "n_significant": int(table["significant"].sum()),
        "df1": int(table["df1"].max()) if len(table) else 0, "sig_p": config.sig_p,
        "min_p": float(table["p"].min()) if len(table) else float("nan"),
        "manhattan": figure(out / "manhattan_multivariate.png", "Manhattan of the joint test"),
        "table_file": dg.MetadataValue.path(str(tsv)),
        **table_metadata(home, MULTIVARIATE, cohort=cohort, model_id=model_id)})


class MinpConfig(dg.Config):
    """Genome-wide significance of the minP; None = 5e-8 / the number of UDIP dims tested."""

    sig_p: float | None = None


@dg.asset(partitions_def=cohort_partitions, group_name="gwas", kinds={"duckdb"}, ins=_CHROMOSOMES,
          io_manager_key=LINEAGE_IO)
def minp_sumstats(context: dg.AssetExecutionContext, config: MinpConfig, home: UdipHome,
                  chromosomes: list[ModelRef]) -> dg.Output[ModelRef]:
    """Minimum p over the UDIP dims per SNP, all chromosomes of the cohort; lambda GC per dim; plots."""
    cohort = context.partition_key
    model, minp, files = _gather_chromosomes(home, chromosomes, cohort, "minp")
    model_id = model.model_id
    lambdas = _lambda_gc(files)  # one per dim tested
    sig_p = config.sig_p if config.sig_p is not None else genome_wide_threshold(len(lambdas))
    minp["significant"] = minp["p"] <= sig_p
    home.write(MINP, minp.assign(cohort=cohort, model_id=model_id), cohort=cohort, model_id=model_id)
    out = home.artifacts("gwas_reports", cohort, model_id)
    from udip_assets.genetics.gwas_plots import manhattan_figure, qq_figure

    fuma = write_tsv_atomic(fuma_minp_table(minp), out / "minp_fuma.tsv")
    manhattan_figure(minp, out / "manhattan.png", sig_p=sig_p, n_dims=len(lambdas))
    qq_figure(minp["p"].to_numpy(), out / "qq.png", min_of=len(lambdas),
              title=f"QQ of minP, Sidak-adjusted for {len(lambdas)} dims")
    write_text_atomic(out / "lambda_gc.json", json.dumps({"lambda_gc": lambdas.tolist()}))
    return dg.Output(replace(model, chrom=None), metadata={
        "n_snps": len(minp), "n_significant": int(minp["significant"].sum()),
        "n_chromosomes": len(files), "sig_p": sig_p, "n_dims": len(lambdas),
        "lambda_gc_min": float(np.nanmin(lambdas)), "lambda_gc_median": float(np.nanmedian(lambdas)),
        "lambda_gc_max": float(np.nanmax(lambdas)),
        "manhattan": figure(out / "manhattan.png", "Manhattan of minP"), "qq": figure(out / "qq.png", "QQ of minP"),
        "fuma_minp": dg.MetadataValue.path(str(fuma)), **table_metadata(home, MINP, cohort=cohort, model_id=model_id)})


def _lambda_gc(minp_files: list[Path]) -> np.ndarray:
    """Genome-wide lambda GC per dim from the |t| histograms ``gwas_sumstats`` saved beside each minP file.

    The engine's own rule (:func:`~udip_assets.genetics.gwas.lambda_from_histogram`), as ``udip gwas``
    reports it; the summary statistics are not read again.
    """
    hist, df_ref = None, None
    for minp_file in minp_files:
        path = minp_file.with_name("t_histogram.npz")
        if not path.exists():
            raise dg.Failure(f"{path} is missing (written by an older udip); re-materialize gwas_sumstats")
        with np.load(path) as saved:
            if df_ref is not None and int(saved["df_ref"]) != df_ref:
                raise dg.Failure(f"{path} was computed on other subjects or covariates (df {int(saved['df_ref'])} "
                                 f"vs {df_ref}); re-materialize every chromosome of gwas_sumstats")
            df_ref = int(saved["df_ref"])
            hist = saved["t_histogram"] if hist is None else hist + saved["t_histogram"]
    return lambda_from_histogram(hist, df_ref)


def cohort_chromosomes(home: UdipHome, cohort: str) -> list[str]:
    """The chromosomes of the cohort's genotypes (its ``gwas_sumstats`` partitions that test SNPs)."""
    return genotyped_chromosomes(load_cohort(home.cohort_dir(cohort)))


gwas_assets = [gwas_sumstats, minp_sumstats, multivariate_sumstats]
