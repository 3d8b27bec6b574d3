"""One GWAS partition (a cohort's chromosome) as files in, files out: the unit a cluster worker runs.

The orchestrator writes the partition's inputs (the UDIPs and covariates of the GWAS sample) into
the partition's folder; :func:`run_partition` reads them and the chromosome's genotypes, runs the
engine and writes every output beside them, each atomically: ``sumstats.parquet`` (every SNP x
dim), ``minp.parquet``, ``multivariate.parquet``, ``hits.parquet`` (p < keep_p) and
``t_histogram.npz``. It never opens the warehouse (DuckDB has one writer process): the orchestrator
loads ``hits.parquet`` into ``gwas_hits`` when the partition is done. So a chromosome runs the same
in the Dagster process, as a SLURM job or a pod, on any worker that sees the folder, and a worker
killed part-way leaves the previous complete outputs (or none), never a torn file.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, fields
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.atomic import atomic_path, write_text_atomic
from udip_assets.genetics.genotype_stream import PlinkSource
from udip_assets.genetics.gwas import GwasConfig, scan_associations

INPUT_FILES = ("phenotypes.parquet", "covariates.parquet", "gwas_config.json")
OUTPUT_FILES = ("sumstats.parquet", "minp.parquet", "multivariate.parquet", "hits.parquet", "t_histogram.npz")


def write_partition_inputs(out: Path, phenotypes: pd.DataFrame, covariates: pd.DataFrame,
                           config: GwasConfig) -> None:
    """Write what :func:`run_partition` reads into ``out`` (index = IID in both tables)."""
    out.mkdir(parents=True, exist_ok=True)
    for name, table in (("phenotypes", phenotypes), ("covariates", covariates)):
        with atomic_path(out / f"{name}.parquet") as tmp:
            table.rename_axis("iid").to_parquet(tmp)
    write_text_atomic(out / "gwas_config.json", json.dumps(asdict(config), indent=1))


def _read_config(path: Path) -> GwasConfig:
    saved = json.loads(path.read_text())
    known = {f.name for f in fields(GwasConfig)}
    unknown = sorted(set(saved) - known)
    if unknown:
        raise ValueError(f"{path}: unknown GWAS setting(s) {', '.join(unknown)} (written by another udip "
                         "version?); re-materialize the partition")
    return GwasConfig(**saved)


def run_partition(out: Path | str, genotypes: Path | str, chrom: str,
                  log: Callable[[str], None] = print) -> dict:
    """Test chromosome ``chrom`` of the PLINK fileset ``genotypes`` on the inputs in ``out``.

    Returns a summary (JSON-serialisable): samples, variants, dims, hits, skipped SNPs, seconds.
    """
    out = Path(out)
    missing = [name for name in INPUT_FILES if not (out / name).exists()]
    if missing:
        raise FileNotFoundError(f"{out}: the partition's input(s) {', '.join(missing)} are missing; the "
                                "orchestrator writes them before it starts the worker")
    phenotypes = pd.read_parquet(out / "phenotypes.parquet")
    covariates = pd.read_parquet(out / "covariates.parquet")
    config = _read_config(out / "gwas_config.json")
    started = time.perf_counter()
    log(f"chromosome {chrom}: {phenotypes.shape[0]} subjects x {phenotypes.shape[1]} dims, "
        f"{covariates.shape[1]} covariates, genotypes {genotypes}")
    source = PlinkSource(genotypes, sample_iids=list(phenotypes.index), chrom=chrom)
    result = scan_associations(source, phenotypes, covariates, config, sumstats_path=out / "sumstats.parquet")
    for name, table in (("minp", result.minp), ("multivariate", result.multivariate), ("hits", result.hits)):
        with atomic_path(out / f"{name}.parquet") as tmp:
            table.to_parquet(tmp, index=False)
    # the |t| histogram per dim: minp_sumstats sums the chromosomes' for a genome-wide lambda GC
    with atomic_path(out / "t_histogram.npz") as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(fh, t_histogram=result.t_histogram, df_ref=result.df_ref)
    seconds = round(time.perf_counter() - started, 2)
    log(f"chromosome {chrom}: tested {result.n_variants} variants, {len(result.hits)} hits below "
        f"p {config.keep_p:g}, in {seconds} s")
    return {"n_subjects": result.n_samples, "n_variants": result.n_variants, "n_dims": result.n_dims,
            "n_hits": len(result.hits), "n_skipped": {k: int(v) for k, v in result.n_skipped.items()},
            "seconds": seconds}
