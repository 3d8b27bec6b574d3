"""Model selection by loci: the paper's training criterion.

The paper evaluated checkpoints every 10 epochs by the number of genomic risk loci their UDIPs
find, kept the best, and would stop after 100 epochs without a gain. Here the sweep's points are
(epoch, loci count); :func:`select_by_loci` picks the checkpoint and :func:`patience_stop` says
where the patience rule would have stopped training.

Notes
-----
The paper selected on its test (inference) set, so the loci count of the selected model is an
optimistic estimate of what the same model finds on new subjects (the maximum of noisy counts is
biased upwards). A separate selection cohort (or a held-out slice of subjects that is never used
for the final GWAS) removes that bias: the final GWAS then tests a model chosen without its data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from udip_assets.cohort.gwas_inputs import GwasSample
from udip_assets.errors import UdipConfigError
from udip_assets.genetics.clump import ClumpConfig, clump_loci
from udip_assets.genetics.genotype_stream import PlinkSource
from udip_assets.genetics.gwas import GwasConfig, scan_associations
from udip_assets.genetics.ld import LDCalculator
from udip_assets.genetics.plink import read_bim


@dataclass(frozen=True)
class SweepPoint:
    """One evaluated checkpoint."""

    epoch: int
    model_id: str
    n_loci: int
    n_significant_snps: int = 0


def select_by_loci(points: Sequence[SweepPoint]) -> SweepPoint:
    """The checkpoint with the most loci; ties go to more significant SNPs, then to the earlier epoch.

    Raises
    ------
    UdipConfigError
        No points (no checkpoint was evaluated).
    """
    if not points:
        raise UdipConfigError("no checkpoints were evaluated; train with checkpoint_every <= epochs")
    return min(points, key=lambda p: (-p.n_loci, -p.n_significant_snps, p.epoch))


def patience_stop(points: Sequence[SweepPoint], patience_epochs: int) -> int | None:
    """Epoch at which training would stop: the first evaluation ``patience_epochs`` after the last gain.

    Parameters
    ----------
    points : sequence of SweepPoint
        Evaluations in any order.
    patience_epochs : int
        Epochs without a strictly larger loci count after which training stops (paper: 100).

    Returns
    -------
    int or None
        The stopping epoch, or None if the rule never fires within the evaluated epochs.
    """
    if patience_epochs < 1:
        raise UdipConfigError(f"patience_epochs must be >= 1, got {patience_epochs}")
    best, best_epoch = -1, None
    for p in sorted(points, key=lambda q: q.epoch):
        if p.n_loci > best:
            best, best_epoch = p.n_loci, p.epoch
        elif p.epoch - best_epoch >= patience_epochs:
            return p.epoch
    return None


def loci_of_sample(sample: GwasSample, genotypes: Path, gwas_cfg: GwasConfig, clump_cfg: ClumpConfig,
                   ld_method: str = "haplotype") -> tuple[pd.DataFrame, int]:
    """GWAS of every chromosome of ``genotypes`` on ``sample``, then FUMA clumping: (loci, n significant SNPs).

    Nothing is written: the minP of each chromosome is kept in memory (one row per SNP). The loci are
    the minP ones (the paper's count), so the joint test is not computed.
    """
    gwas_cfg = replace(gwas_cfg, multivariate=False)
    chroms = read_bim(genotypes.with_name(genotypes.name + ".bim"))["chrom"].astype(str).unique()
    iids = list(sample.phenotypes.index)
    minp = []
    for chrom in chroms:
        source = PlinkSource(genotypes, sample_iids=iids, chrom=chrom)
        result = scan_associations(source, sample.phenotypes, sample.covariates, gwas_cfg, sumstats_path=None)
        minp.append(result.minp)
    minp_df = pd.concat(minp, ignore_index=True)
    ld = LDCalculator(genotypes, sample_iids=iids, method=ld_method, window_bp=clump_cfg.window_bp)
    loci = clump_loci(minp_df, ld, clump_cfg, progress=False).loci
    return loci, int((minp_df["p"] <= clump_cfg.sig_p).sum())
