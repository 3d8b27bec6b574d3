"""Loci assets: FUMA-style genomic risk loci from the minP table, and the annotation inputs dbt reads.

``genomic_risk_loci`` writes three tables (genomic_risk_loci, lead_snps, ind_sig_snps) and a
FUMA-compatible ``GenomicRiskLoci.txt``; ``gene_annotations`` loads the cohort's gene table,
reference loci and GWAS Catalog file into ``genes``, ``reference_loci`` and ``gwas_catalog``.
"""

import time

import dagster as dg
import pandas as pd

from udip_assets.cohort.spec import load_cohort
from udip_assets.cohort.truth_check import load_truth, score_loci
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome, latest_model_id
from udip_assets.genetics.annotations import (
    read_gene_table,
    read_gwas_catalog,
    read_reference_loci,
    reference_loci_from_truth,
)
from udip_assets.genetics.clump import ClumpConfig, clump_loci, write_fuma_loci
from udip_assets.genetics.ld import LDCalculator
from udip_assets.store.schema import GENES, GENOMIC_RISK_LOCI, GWAS_CATALOG, IND_SIG_SNPS, LEAD_SNPS, REFERENCE_LOCI

MINP_KEY = dg.AssetKey("minp_sumstats")


class LociConfig(dg.Config):
    """Mirrors :class:`udip_assets.genetics.clump.ClumpConfig` (FUMA SNP2GENE's parameters)."""

    sig_p: float = ClumpConfig().sig_p
    min_maf: float = ClumpConfig().min_maf
    exclude_mhc: bool = ClumpConfig().exclude_mhc
    r2_ind: float = ClumpConfig().r2_ind
    candidate_p: float = ClumpConfig().candidate_p
    r2_lead: float = ClumpConfig().r2_lead
    merge_distance_bp: int = ClumpConfig().merge_distance_bp
    window_bp: int = ClumpConfig().window_bp
    ld_method: str = "haplotype"
    ld_reference: str | None = None

    def to_domain(self) -> ClumpConfig:
        return ClumpConfig(sig_p=self.sig_p, min_maf=self.min_maf, exclude_mhc=self.exclude_mhc,
                           r2_ind=self.r2_ind, candidate_p=self.candidate_p, r2_lead=self.r2_lead,
                           merge_distance_bp=self.merge_distance_bp, window_bp=self.window_bp)


def _gwas_sample_ids(home: UdipHome, cohort: str, model_id: str) -> list[str] | None:
    """The GWAS subjects (inference split of ``udips``): LD is computed over them, as the GWAS was."""
    ids = home.query("SELECT subject_id FROM udips WHERE cohort = ? AND model_id = ? AND split = 'inference'",
                     [cohort, model_id])["subject_id"].astype(str).tolist()
    return ids or None


@dg.multi_asset(
    specs=[
        dg.AssetSpec("genomic_risk_loci", deps=[MINP_KEY], kinds={"duckdb"},
                     description="One row per genomic risk locus (FUMA GenomicRiskLoci.txt columns)."),
        dg.AssetSpec("lead_snps", deps=[MINP_KEY], kinds={"duckdb"},
                     description="One row per lead SNP (FUMA leadSNPs.txt)."),
        dg.AssetSpec("ind_sig_snps", deps=[MINP_KEY], kinds={"duckdb"},
                     description="One row per independent significant SNP (FUMA IndSigSNPs.txt)."),
    ],
    partitions_def=cohort_partitions,
    group_name="loci",
)
def genomic_risk_loci(context: dg.AssetExecutionContext, config: LociConfig, home: UdipHome):
    """FUMA SNP2GENE clumping of the cohort's minP table, LD from the cohort's own genotypes (or a panel)."""
    cohort = context.partition_key
    spec = load_cohort(home.cohort_dir(cohort))
    model_id = latest_model_id(context, "minp_sumstats", cohort)
    minp = home.query("SELECT snp, chrom, pos_bp, a1, a2, p, dim, beta, se, maf FROM minp "
                      "WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    prefix = config.ld_reference or spec.genotypes
    samples = None if config.ld_reference else _gwas_sample_ids(home, cohort, model_id)
    started = time.perf_counter()
    ld = LDCalculator(prefix, sample_iids=samples, method=config.ld_method, window_bp=config.window_bp)
    result = clump_loci(minp, ld, config.to_domain())
    seconds = time.perf_counter() - started
    part = {"cohort": cohort, "model_id": model_id}
    home.write(GENOMIC_RISK_LOCI, result.loci.assign(**part, chr=result.loci["chr"].astype(str)), **part)
    home.write(LEAD_SNPS, result.lead_snps.assign(**part, chr=result.lead_snps["chr"].astype(str)), **part)
    home.write(IND_SIG_SNPS, result.ind_sig_snps.assign(**part, chr=result.ind_sig_snps["chr"].astype(str)), **part)
    out_dir = home.artifacts("loci", cohort, model_id)
    fuma = write_fuma_loci(result.loci, out_dir / "GenomicRiskLoci.txt")
    truth_meta = _truth_metadata(context, spec, result.loci)
    common = {"model_id": model_id, "cohort": cohort}
    yield dg.MaterializeResult(asset_key="genomic_risk_loci", metadata={
        **common, "n_loci": len(result.loci), "n_snps_in_minp": len(minp), "seconds": round(seconds, 2),
        "fuma_file": dg.MetadataValue.path(str(fuma)), "n_sig_not_in_ld_panel": len(result.not_in_panel),
        "ld": f"{config.ld_method} r2 from {prefix}", **truth_meta,
        "config": dg.MetadataValue.json(config.model_dump())})
    yield dg.MaterializeResult(asset_key="lead_snps", metadata={**common, "n_lead_snps": len(result.lead_snps)})
    yield dg.MaterializeResult(asset_key="ind_sig_snps",
                               metadata={**common, "n_ind_sig_snps": len(result.ind_sig_snps)})


def _truth_metadata(context: dg.AssetExecutionContext, spec, loci: pd.DataFrame) -> dict:
    """Synthetic cohorts: recall of the detectable planted loci and precision of the loci found."""
    if spec.truth is None:
        return {}
    score = score_loci(loci, load_truth(spec.truth))
    context.log.info(f"planted loci: recall {score.n_found_detectable}/{score.n_detectable} detectable "
                     f"({score.recall:.0%}); precision {score.n_true_loci}/{score.n_loci} loci near a planted SNP; "
                     f"missed {list(score.missed)}")
    return {"truth_recall": score.recall, "truth_precision": score.precision,
            "truth_found": dg.MetadataValue.json(list(score.found)),
            "truth_missed": dg.MetadataValue.json(list(score.missed))}


@dg.multi_asset(
    specs=[
        dg.AssetSpec("genes", kinds={"duckdb"}, description="One row per gene of the cohort's gene table."),
        dg.AssetSpec("reference_loci", kinds={"duckdb"},
                     description="One row per previously reported lead SNP the loci are compared against."),
        dg.AssetSpec("gwas_catalog", kinds={"duckdb"},
                     description="One row per GWAS Catalog association (the catalog's TSV columns)."),
    ],
    partitions_def=cohort_partitions,
    group_name="loci",
)
def gene_annotations(context: dg.AssetExecutionContext, home: UdipHome):
    """Load the cohort's gene table, reference loci and GWAS Catalog export (each optional) into the warehouse."""
    cohort = context.partition_key
    spec = load_cohort(home.cohort_dir(cohort))
    genes = read_gene_table(spec.genes) if spec.genes else pd.DataFrame(columns=list(GENES.column_names))
    if spec.reference_loci:
        refs = read_reference_loci(spec.reference_loci)
    elif spec.truth:
        refs = reference_loci_from_truth(load_truth(spec.truth))
    else:
        refs = pd.DataFrame(columns=["source", "snp", "chrom", "pos_bp", "trait"])
    catalog = read_gwas_catalog(spec.gwas_catalog) if spec.gwas_catalog else pd.DataFrame(columns=["row_id"])
    for name, table, rows in (("genes", GENES, genes), ("reference_loci", REFERENCE_LOCI, refs),
                              ("gwas_catalog", GWAS_CATALOG, catalog)):
        home.write(table, rows.assign(cohort=cohort), cohort=cohort)
        if rows.empty:
            context.log.warning(f"cohort {cohort} names no {name} file in cohort.yaml; {name} is empty")
        yield dg.MaterializeResult(asset_key=name, metadata={"n_rows": len(rows), "cohort": cohort})


loci_assets = [genomic_risk_loci, gene_annotations]

