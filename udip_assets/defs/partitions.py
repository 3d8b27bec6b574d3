"""Partitions: one dynamic partition per cohort (its folder name under ``cohorts/``), and cohort x
chromosome for the GWAS, so that chromosomes of one cohort run as separate, parallel partitions.

The chromosome dimension is dynamic too: :func:`add_cohort_partitions` adds the chromosomes a
cohort's ``.bim`` holds, so a cohort genotyped on chromosomes 2, 6 and 11 brings those three
partitions, not 23. (A Dagster multi-partition is the product of its dimensions: with two
cohorts on different chromosomes, each has the other's as partitions too; ``gwas_sumstats``
records such a partition as "not genotyped" with zero variants instead of failing.)
"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from udip_assets.cohort.spec import CohortSpec

cohort_partitions = dg.DynamicPartitionsDefinition(name="cohort")
chrom_partitions = dg.DynamicPartitionsDefinition(name="chrom")

cohort_chrom_partitions = dg.MultiPartitionsDefinition({"cohort": cohort_partitions, "chrom": chrom_partitions})


def chrom_order(chrom: str) -> tuple[int, str]:
    """Sort key: autosomes numerically, then X, Y, XY, MT."""
    return (int(chrom), "") if chrom.isdigit() else (10_000, chrom)


def genotyped_chromosomes(spec: CohortSpec) -> list[str]:
    """The chromosome codes of the cohort's ``.bim``, in genome order."""
    bim = spec.genotypes.with_name(spec.genotypes.name + ".bim")
    codes = pd.read_csv(bim, sep=r"\s+", header=None, usecols=[0], dtype=str)[0].unique()
    return sorted({str(c) for c in codes}, key=chrom_order)


def add_cohort_partitions(instance: dg.DagsterInstance, spec: CohortSpec) -> bool:
    """Add the cohort and its genotyped chromosomes as partitions; True if the cohort was new."""
    new = not instance.has_dynamic_partition(cohort_partitions.name, spec.name)
    if new:
        instance.add_dynamic_partitions(cohort_partitions.name, [spec.name])
    known = set(instance.get_dynamic_partitions(chrom_partitions.name))
    missing = [c for c in genotyped_chromosomes(spec) if c not in known]
    if missing:
        instance.add_dynamic_partitions(chrom_partitions.name, missing)
    return new
