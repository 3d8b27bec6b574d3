"""Partitions: one dynamic partition per cohort (its folder name under ``cohorts/``), and cohort x
chromosome for the GWAS, so that chromosomes of one cohort run as separate, parallel partitions."""

import dagster as dg

cohort_partitions = dg.DynamicPartitionsDefinition(name="cohort")

# Autosomes 1-22 and X (PLINK codes 23-26, X/Y/XY/MT, are named as in the .bim).
chrom_partitions = dg.StaticPartitionsDefinition([str(c) for c in range(1, 23)] + ["X"])

cohort_chrom_partitions = dg.MultiPartitionsDefinition({"cohort": cohort_partitions, "chrom": chrom_partitions})
