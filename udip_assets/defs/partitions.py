"""Partitions: one dynamic partition per cohort (its folder name under ``cohorts/``)."""

import dagster as dg

cohort_partitions = dg.DynamicPartitionsDefinition(name="cohort")
