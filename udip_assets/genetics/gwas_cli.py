"""``udip gwas``: a standalone GWAS of PLINK 2 phenotype files on PLINK 1 or BGEN genotypes.

Writes, under ``--out``: ``sumstats/chr{CHR}.parquet`` (every SNP x phenotype: beta, se, t, p,
-log10 p; one file per chromosome), ``minp.tsv`` (one row per SNP in FUMA's upload format: SNP,
CHR, BP, A1, A2, P, plus dim, BETA, SE), ``multivariate.tsv`` (one row per SNP: the joint F test of
all phenotypes, ``multivariate.MULTIVARIATE_COLUMNS``; not with ``--no-multivariate``), ``hits.tsv``
(SNP x phenotype with p below ``--threshold``), ``manhattan.png``, ``qq.png`` and ``summary.json``
(counts, lambda GC range, seconds, options). Register it with ``main.add_command(gwas_command, "gwas")``.
"""

from __future__ import annotations

import importlib
import json
import threading
import time
from dataclasses import asdict
from pathlib import Path

import click
import numpy as np
import pandas as pd
from tqdm import tqdm

from udip_assets.atomic import write_tsv_atomic
from udip_assets.errors import CovariateError, GenotypeError, SummaryStatsError, UdipConfigError
from udip_assets.genetics.clump import genome_wide_threshold
from udip_assets.genetics.design import CovariateSpec, design_matrix, read_plink2_table
from udip_assets.genetics.genotype_stream import BgenSource, GenotypeSource, PlinkSource
from udip_assets.genetics.gwas import (
    DTYPES,
    GwasConfig,
    GwasResult,
    fuma_minp_table,
    merge_results,
    scan_associations,
)

_DEFAULTS = GwasConfig()


def _genotype_source(bfile: Path | None, bgen: Path | None, sample: Path | None,
                     bgen_a1: str) -> GenotypeSource:
    if (bfile is None) == (bgen is None):
        raise UdipConfigError("pass exactly one of --bfile PREFIX or --bgen FILE (got "
                              f"{'both' if bfile else 'neither'}); e.g. --bfile data/cohort")
    if sample is not None and bgen is None:
        raise UdipConfigError("--sample goes with --bgen; a PLINK fileset takes its samples from the .fam")
    if bfile is not None:
        return PlinkSource(bfile)
    # one decoding thread per chunk: the scan's workers already decode their chunks side by side
    return BgenSource(bgen, sample_path=sample, a1_allele=bgen_a1, decode_threads=1)


def read_covariates(path: Path | None, index: pd.Index) -> pd.DataFrame:
    """Covariates of a PLINK 2 ``--covar`` file as a numeric design (categorical columns one-hot).

    Columns whose values are all numbers enter as they are; any other column is categorical, with
    its most frequent level as reference (``genetics.design.design_matrix``). No file: no
    covariates (intercept only).
    """
    if path is None:
        return pd.DataFrame(index=index)
    table = read_plink2_table(path)
    numeric = tuple(c for c in table.columns if pd.api.types.is_numeric_dtype(table[c]))
    categorical = tuple(c for c in table.columns if c not in numeric)
    return design_matrix(table, CovariateSpec(numeric=numeric, categorical=categorical, min_level_count=1))


def _import_plots_early() -> threading.Thread:
    """Import matplotlib (via gwas_plots, ~0.8 s) on a thread while the scan runs; joined before plotting."""
    thread = threading.Thread(target=importlib.import_module, args=("udip_assets.genetics.gwas_plots",),
                              name="import-plots", daemon=True)
    thread.start()
    return thread


def _write_tables(result: GwasResult, out: Path, sig_p: float) -> dict[str, Path]:
    from udip_assets.genetics.gwas_plots import manhattan_figure, qq_figure  # matplotlib: ~0.8 s to import

    paths = {"minp": out / "minp.tsv", "hits": out / "hits.tsv", "manhattan": out / "manhattan.png",
             "qq": out / "qq.png"}
    tables = [("minp", fuma_minp_table(result.minp)), ("hits", result.hits)]
    if result.config.multivariate:
        paths["multivariate"] = out / "multivariate.tsv"
        tables.append(("multivariate", result.multivariate))
    for key, frame in tables:
        write_tsv_atomic(frame, paths[key])
    manhattan_figure(result.minp, paths["manhattan"], sig_p=sig_p, n_dims=result.n_dims)
    if len(result.minp):
        qq_figure(result.minp["p"].to_numpy(), paths["qq"], min_of=result.n_dims,
                  title=f"QQ of minP, Sidak-adjusted for {result.n_dims} phenotypes")
    else:
        paths.pop("qq")
    return paths


def _summary(result: GwasResult, cfg: GwasConfig, inputs: dict, files: dict, sig_p: float,
             seconds: float) -> dict:
    summary = result.summary()
    summary.update({
        "n_significant_snps": int((result.minp["p"] <= sig_p).sum()), "sig_p": sig_p,
        "lambda_gc": [None if not np.isfinite(x) else round(float(x), 5) for x in result.lambda_gc],
        "dims": list(result.dims), "seconds": round(seconds, 3), "scan_seconds": round(result.seconds, 3),
        "options": {**asdict(cfg), **inputs}, "files": {k: str(v) for k, v in files.items()}})
    return summary


@click.command("gwas", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--bfile", type=click.Path(path_type=Path), help="PLINK 1 fileset prefix (.bed/.bim/.fam).")
@click.option("--bgen", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="BGEN file.")
@click.option("--sample", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Oxford .sample for --bgen (default: sample IDs stored in the .bgen).")
@click.option("--bgen-a1", type=click.Choice(["second", "first"]), default="second", show_default=True,
              help="BGEN allele counted as A1: 'second' for REF-first files (UK Biobank).")
@click.option("--pheno", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PLINK 2 phenotype file: '#FID IID name...', one column per phenotype.")
@click.option("--covar", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="PLINK 2 covariate file; text columns are one-hot encoded.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (created).")
@click.option("--threshold", default=_DEFAULTS.keep_p, show_default=True, type=float,
              help="SNP x phenotype results with p below this go to hits.tsv.")
@click.option("--sig-p", type=float, default=None,
              help="Manhattan line and significant-SNP count; default 5e-8 / number of phenotypes.")
@click.option("--chunk-size", default=_DEFAULTS.chunk_variants, show_default=True, type=int,
              help="SNPs per chunk.")
@click.option("--missing", type=click.Choice(["drop", "mean-impute"]), default=_DEFAULTS.missing.replace("_", "-"),
              show_default=True,
              help="Missing calls: drop the sample for that SNP (PLINK 2) or impute the SNP's mean.")
@click.option("--maf", default=_DEFAULTS.maf_min, show_default=True, type=float,
              help="Minimum minor allele frequency.")
@click.option("--call-rate", default=_DEFAULTS.call_rate_min, show_default=True, type=float,
              help="Minimum SNP call rate.")
@click.option("--dtype", type=click.Choice(DTYPES), default=_DEFAULTS.dtype, show_default=True,
              help="Precision of the genotype matrix products (hits are always float64).")
@click.option("--threads", type=int, default=_DEFAULTS.threads,
              help="Worker threads (default: all available CPUs).")
@click.option("--device", default=_DEFAULTS.device, show_default=True,
              help="Where the genotype matrix products run: cpu, or a CUDA device (cuda, cuda:1).")
@click.option("--no-sumstats", is_flag=True, help="Skip the full per-SNP x phenotype Parquet files.")
@click.option("--no-multivariate", is_flag=True, default=not _DEFAULTS.multivariate,
              help="Skip the joint F test of all phenotypes per SNP (multivariate.tsv).")
@click.option("--inverse-normal", is_flag=True, default=_DEFAULTS.inverse_normal,
              help="Rank-based inverse-normal transform of each phenotype (Blom) before the scan.")
def gwas_command(bfile, bgen, sample, bgen_a1, pheno, covar, out_dir, threshold, sig_p, chunk_size, missing,
                 maf, call_rate, dtype, threads, device, no_sumstats, no_multivariate, inverse_normal) -> None:
    """Linear regression of every phenotype on every SNP with covariates (exact OLS, as plink2 --glm),
    and the joint F test of all phenotypes per SNP."""
    started = time.perf_counter()
    plots_import = _import_plots_early()
    try:
        cfg = GwasConfig(missing=missing.replace("-", "_"), maf_min=maf, call_rate_min=call_rate,
                         chunk_variants=chunk_size, dtype=dtype, keep_p=threshold, threads=threads, device=device,
                         multivariate=not no_multivariate, inverse_normal=inverse_normal)
        source = _genotype_source(bfile, bgen, sample, bgen_a1)
        phenotypes = read_plink2_table(pheno)
        covariates = read_covariates(covar, phenotypes.index)
        out_dir.mkdir(parents=True, exist_ok=True)
        sig = sig_p if sig_p is not None else genome_wide_threshold(max(phenotypes.shape[1], 1))
        results = []
        with tqdm(total=source.n_variants, unit="SNP", unit_scale=True, desc="gwas") as bar:
            for chrom in source.chromosomes:
                path = None if no_sumstats else out_dir / "sumstats" / f"chr{chrom}.parquet"
                results.append(scan_associations(source.select_chrom(chrom), phenotypes, covariates, cfg,
                                                 sumstats_path=path, progress=bar.update))
        result = merge_results(results)
        plots_import.join()
        files = _write_tables(result, out_dir, sig)
        if not no_sumstats:
            files["sumstats"] = out_dir / "sumstats"
        inputs = {name: str(value) if value is not None else None for name, value in
                  (("bfile", bfile), ("bgen", bgen), ("sample", sample), ("pheno", pheno), ("covar", covar))}
        summary = _summary(result, cfg, inputs, files, sig, time.perf_counter() - started)
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    except (UdipConfigError, GenotypeError, CovariateError, SummaryStatsError) as exc:
        raise click.ClickException(str(exc)) from exc
    lam = [x for x in summary["lambda_gc"] if x is not None]
    click.echo(f"gwas: {result.n_samples:,} samples x {result.n_variants:,} SNPs x {result.n_dims} "
               f"phenotypes in {summary['seconds']:.1f} s; {summary['n_significant_snps']} SNPs with minP <= "
               f"{sig:.3g}; "
               f"lambda GC {min(lam, default=float('nan')):.3f}-{max(lam, default=float('nan')):.3f}; "
               f"results in {out_dir}")
