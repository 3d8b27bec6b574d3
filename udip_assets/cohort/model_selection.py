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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from udip_assets.cohort.gwas_inputs import GwasSample
from udip_assets.errors import UdipConfigError
from udip_assets.genetics.clump import ClumpConfig
from udip_assets.genetics.discovery import discover_loci, discover_minp_loci_of_sets
from udip_assets.genetics.gwas import GwasConfig


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
    """The minP loci of ``sample`` (the paper's count) and its number of significant SNPs.

    :func:`~udip_assets.genetics.discovery.discover_loci` with the minP only: the sweep and the
    truth control take the path the pipeline's assets take, in memory.
    """
    found = discover_loci(genotypes, sample.phenotypes, sample.covariates, gwas_cfg, {"minp": clump_cfg},
                          ld_method=ld_method)
    return found.clumps["minp"].loci, found.n_significant(clump_cfg.sig_p)


def loci_of_samples(samples: Mapping[str, GwasSample], genotypes: Path, gwas_cfg: GwasConfig,
                    clump_cfg: ClumpConfig, ld_method: str = "haplotype") -> dict[str, tuple[pd.DataFrame, int]]:
    """:func:`loci_of_sample` of several samples of the same subjects and covariates (the sweep's
    checkpoints) in one pass over the genotypes; name -> (minP loci, significant SNPs)."""
    first = next(iter(samples.values()))
    for name, sample in samples.items():
        if not (sample.covariates.index.equals(first.covariates.index)
                and sample.covariates.equals(first.covariates)):
            raise UdipConfigError(f"sample {name!r} has other subjects or covariates than the first; the "
                                  "checkpoints of one sweep must be tested on the same subjects")
    found = discover_minp_loci_of_sets(genotypes, {name: s.phenotypes for name, s in samples.items()},
                                       first.covariates, gwas_cfg, clump_cfg, ld_method=ld_method)
    return {name: (d.clumps["minp"].loci, d.n_significant(clump_cfg.sig_p)) for name, d in found.items()}
