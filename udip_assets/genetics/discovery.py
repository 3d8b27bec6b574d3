"""From phenotypes to genomic risk loci: the one path every caller takes.

UDIPs (or any phenotype matrix) + genotypes + covariates -> the GWAS of every chromosome -> the
minP and the joint test per SNP -> FUMA clumping of each. The pipeline runs the same steps as
assets (one chromosome per ``gwas_sumstats`` partition, then :func:`clump_methods` in
``genomic_risk_loci``); the checkpoint sweep and ``udip truth --control`` call
:func:`discover_loci` in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.genetics.clump import MINP_COLUMNS, ClumpConfig, ClumpResult, clump_loci
from udip_assets.genetics.genotype_stream import PlinkSource
from udip_assets.genetics.gwas import GwasConfig, GwasResult, merge_results, scan_associations, scan_phenotype_sets
from udip_assets.genetics.ld import LDCalculator
from udip_assets.genetics.plink import read_bim

METHODS = ("minp", "multivariate")


def fileset_chromosomes(genotypes: Path) -> list[str]:
    """Chromosome codes of a PLINK 1 fileset's .bim, in file order."""
    bim = read_bim(genotypes.with_name(genotypes.name + ".bim"))
    return list(dict.fromkeys(bim["chrom"].astype(str)))


def scan_genome(genotypes: Path, phenotypes: pd.DataFrame, covariates: pd.DataFrame, cfg: GwasConfig,
                chroms: Sequence[str] | None = None) -> GwasResult:
    """The GWAS of ``phenotypes`` on every chromosome of ``genotypes`` (or ``chroms``), merged.

    Nothing is written: per SNP, the minP and the joint test are kept in memory.
    """
    iids = list(phenotypes.index)
    results = [scan_associations(PlinkSource(genotypes, sample_iids=iids, chrom=chrom), phenotypes, covariates,
                                 cfg, sumstats_path=None)
               for chrom in (chroms or fileset_chromosomes(genotypes))]
    return merge_results(results)


def joint_as_minp(joint: pd.DataFrame, minp: pd.DataFrame) -> pd.DataFrame:
    """The joint test's rows in the clumping input format: its p, no single dim (-1), the SNP's MAF."""
    out = joint[["snp", "chrom", "pos_bp", "a1", "a2", "p"]].merge(minp[["snp", "maf"]], on="snp", how="left")
    out = out.assign(dim=-1, beta=np.nan, se=np.nan)
    return out[list(MINP_COLUMNS)]


def clump_methods(minp: pd.DataFrame, joint: pd.DataFrame, ld: LDCalculator,
                  configs: dict[str, ClumpConfig]) -> dict[str, ClumpResult]:
    """FUMA clumping of each method named in ``configs``: 'minp' (the minP table) and 'multivariate'
    (``joint`` in :func:`joint_as_minp`'s format; skipped when it has no rows)."""
    tables = {"minp": minp, "multivariate": joint}
    unknown = sorted(set(configs) - set(tables))
    if unknown:
        raise ValueError(f"unknown clumping methods {unknown}; choose from {list(METHODS)}")
    return {method: clump_loci(tables[method], ld, cfg, progress=False)
            for method, cfg in configs.items() if method == "minp" or len(tables[method])}


@dataclass(frozen=True)
class Discovery:
    """The GWAS (merged over chromosomes) and the clumping of each method."""

    gwas: GwasResult
    clumps: dict[str, ClumpResult]

    def n_significant(self, sig_p: float) -> int:
        """SNPs whose minP is at most ``sig_p``."""
        return int((self.gwas.minp["p"] <= sig_p).sum())


def discover_loci(genotypes: Path, phenotypes: pd.DataFrame, covariates: pd.DataFrame, gwas_cfg: GwasConfig,
                  configs: dict[str, ClumpConfig], ld_method: str = "haplotype") -> Discovery:
    """GWAS of every chromosome, then the clumping of each method in ``configs``, LD over the GWAS sample.

    Parameters
    ----------
    genotypes : Path
        PLINK 1 fileset prefix.
    phenotypes, covariates : DataFrame
        Indexed by IID, rows aligned (:func:`udip_assets.cohort.gwas_inputs.gwas_sample`).
    gwas_cfg : GwasConfig
        The joint test runs when 'multivariate' is in ``configs``, whatever ``gwas_cfg.multivariate``.
    configs : dict of method -> ClumpConfig
        'minp' and/or 'multivariate'; each method's threshold is its config's ``sig_p``.
    ld_method : str
        :class:`~udip_assets.genetics.ld.LDCalculator` method.
    """
    gwas = scan_genome(genotypes, phenotypes, covariates, replace(gwas_cfg, multivariate="multivariate" in configs))
    window = max(cfg.window_bp for cfg in configs.values())
    ld = LDCalculator(genotypes, sample_iids=list(phenotypes.index), method=ld_method, window_bp=window)
    joint = joint_as_minp(gwas.multivariate, gwas.minp) if len(gwas.multivariate) else gwas.multivariate
    return Discovery(gwas=gwas, clumps=clump_methods(gwas.minp, joint, ld, configs))


def discover_minp_loci_of_sets(genotypes: Path, phenotype_sets: Mapping[str, pd.DataFrame],
                               covariates: pd.DataFrame, gwas_cfg: GwasConfig, clump_cfg: ClumpConfig,
                               ld_method: str = "haplotype") -> dict[str, Discovery]:
    """:func:`discover_loci` (minP only) of several phenotype sets of the same samples, sharing the work.

    One pass over each chromosome's genotypes for all sets (:func:`scan_phenotype_sets`) and
    one LD calculator for all clumpings: the checkpoint sweep's K checkpoints cost one decoding
    of the genotypes and one LD set-up instead of K. Each set's loci are those
    :func:`discover_loci` finds for it alone.
    """
    iids = list(next(iter(phenotype_sets.values())).index)
    per_chrom = [scan_phenotype_sets(PlinkSource(genotypes, sample_iids=iids, chrom=chrom), phenotype_sets,
                                     covariates, gwas_cfg)
                 for chrom in fileset_chromosomes(genotypes)]
    ld = LDCalculator(genotypes, sample_iids=iids, method=ld_method, window_bp=clump_cfg.window_bp)
    out = {}
    for name in phenotype_sets:
        gwas = merge_results([results[name] for results in per_chrom])
        out[name] = Discovery(gwas=gwas, clumps=clump_methods(gwas.minp, gwas.multivariate, ld, {"minp": clump_cfg}))
    return out
