"""Loci assets: FUMA-style genomic risk loci from the minP and joint-test tables, and the annotation
inputs dbt reads.

``genomic_risk_loci`` clumps the model that ``minp_sumstats`` and ``multivariate_sumstats`` both
name (their outputs are its inputs; they must agree), writes three tables (genomic_risk_loci,
lead_snps, ind_sig_snps) and a FUMA-compatible ``GenomicRiskLoci.txt``; ``gene_annotations`` loads
the cohort's gene table, reference loci and GWAS Catalog file into ``genes``, ``reference_loci``
and ``gwas_catalog``.
"""

import time

import dagster as dg
import pandas as pd

from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.gwas import model_gwas_dir
from udip_assets.defs.lineage import ModelRef, same_model
from udip_assets.defs.metadata import preview, table_metadata
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.genetics.annotations import read_gene_table, read_gwas_catalog, read_reference_loci
from udip_assets.genetics.clump import ClumpConfig, genome_wide_threshold, write_fuma_loci
from udip_assets.genetics.discovery import clump_methods, joint_as_minp
from udip_assets.genetics.ld import LDCalculator
from udip_assets.store.schema import (
    GENES,
    GENOMIC_RISK_LOCI,
    GWAS_CATALOG,
    IND_SIG_SNPS,
    LEAD_SNPS,
    REFERENCE_LOCI,
)


class LociConfig(dg.Config):
    """Mirrors :class:`udip_assets.genetics.clump.ClumpConfig` (FUMA SNP2GENE's parameters).

    ``sig_p`` None = 5e-8 / the number of UDIP dims of the model (the minP's Bonferroni rule).
    """

    sig_p: float | None = None
    min_maf: float = ClumpConfig().min_maf
    exclude_mhc: bool = ClumpConfig().exclude_mhc
    mhc_region_bp: list[int] = list(ClumpConfig().mhc_region_bp)
    r2_ind: float = ClumpConfig().r2_ind
    candidate_p: float = ClumpConfig().candidate_p
    r2_lead: float = ClumpConfig().r2_lead
    merge_distance_bp: int = ClumpConfig().merge_distance_bp
    window_bp: int = ClumpConfig().window_bp
    include_panel_snps: bool = ClumpConfig().include_panel_snps
    multivariate_sig_p: float = 5e-8
    ld_method: str = "haplotype"
    ld_reference: str | None = None

    def to_domain(self, n_dims: int, method: str = "minp") -> ClumpConfig:
        """The clumping rules of one method for a model of ``n_dims`` UDIPs: only the threshold differs."""
        if method == "multivariate":
            sig_p = self.multivariate_sig_p
        else:
            sig_p = self.sig_p if self.sig_p is not None else genome_wide_threshold(n_dims)
        return ClumpConfig(sig_p=sig_p, min_maf=self.min_maf, exclude_mhc=self.exclude_mhc,
                           mhc_region_bp=tuple(self.mhc_region_bp), r2_ind=self.r2_ind,
                           candidate_p=self.candidate_p, r2_lead=self.r2_lead,
                           merge_distance_bp=self.merge_distance_bp, window_bp=self.window_bp,
                           include_panel_snps=self.include_panel_snps)


def _gwas_sample_ids(home: UdipHome, cohort: str, model_id: str) -> list[str]:
    """The subjects the GWAS tested (``gwas_sumstats`` wrote them, whatever its ``split``): LD is computed over them."""
    path = model_gwas_dir(home, cohort, model_id) / "samples.txt"
    if not path.exists():
        raise dg.Failure(f"{path} is missing (written by gwas_sumstats since the LD sample follows its split); "
                         f"re-materialize gwas_sumstats for cohort {cohort}")
    return [line for line in path.read_text().splitlines() if line]


_UPSTREAM = ["minp_sumstats", "multivariate_sumstats"]


@dg.multi_asset(
    specs=[
        dg.AssetSpec("genomic_risk_loci", deps=_UPSTREAM, kinds={"duckdb"},
                     description="One row per genomic risk locus and method (FUMA GenomicRiskLoci.txt columns)."),
        dg.AssetSpec("lead_snps", deps=_UPSTREAM, kinds={"duckdb"},
                     description="One row per lead SNP and method (FUMA leadSNPs.txt)."),
        dg.AssetSpec("ind_sig_snps", deps=_UPSTREAM, kinds={"duckdb"},
                     description="One row per independent significant SNP and method (FUMA IndSigSNPs.txt)."),
    ],
    partitions_def=cohort_partitions,
    group_name="loci",
    ins={"minp_model": dg.AssetIn("minp_sumstats"), "joint_model": dg.AssetIn("multivariate_sumstats")},
)
def genomic_risk_loci(context: dg.AssetExecutionContext, config: LociConfig, home: UdipHome, minp_model: ModelRef,
                      joint_model: ModelRef):
    """FUMA SNP2GENE clumping of the minP table and of the joint test, LD from the cohort's genotypes (or a panel)."""
    cohort = context.partition_key
    spec = load_cohort(home.cohort_dir(cohort))
    model = same_model({"minp_sumstats": minp_model, "multivariate_sumstats": joint_model}, cohort)
    model_id, n_dims = model.model_id, model.n_dims
    minp = home.query("SELECT snp, chrom, pos_bp, a1, a2, p, dim, beta, se, maf FROM minp "
                      "WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    joint = home.query("SELECT * FROM multivariate WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    prefix = config.ld_reference or spec.genotypes
    samples = None if config.ld_reference else _gwas_sample_ids(home, cohort, model_id)
    started = time.perf_counter()
    ld = LDCalculator(prefix, sample_iids=samples, method=config.ld_method, window_bp=config.window_bp)
    results = clump_methods(minp, joint_as_minp(joint, minp), ld,
                            {m: config.to_domain(n_dims, m) for m in ("minp", "multivariate")})
    seconds = time.perf_counter() - started
    part = {"cohort": cohort, "model_id": model_id}
    tables = {"genomic_risk_loci": (GENOMIC_RISK_LOCI, "loci"), "lead_snps": (LEAD_SNPS, "lead_snps"),
              "ind_sig_snps": (IND_SIG_SNPS, "ind_sig_snps")}
    writes = []
    for table, attr in tables.values():
        parts = [_method_rows(getattr(r, attr), method) for method, r in results.items()]
        rows = pd.concat([p for p in parts if len(p)] or parts[:1], ignore_index=True)
        writes.append((table, rows.assign(**part, chr=rows["chr"].astype(str))))
    home.write_many(writes, **part)  # the loci and their SNPs from one clumping, never from two
    out_dir = home.artifacts("loci", cohort, model_id)
    fuma = write_fuma_loci(results["minp"].loci, out_dir / "GenomicRiskLoci.txt")
    if "multivariate" in results:
        write_fuma_loci(results["multivariate"].loci, out_dir / "GenomicRiskLoci_multivariate.txt")
    counts = {f"n_loci_{m}": len(r.loci) for m, r in results.items()}
    common = {"model_id": model_id, "cohort": cohort}
    yield dg.MaterializeResult(asset_key="genomic_risk_loci", metadata={
        **common, **counts, "n_dims": n_dims, "n_loci": len(results["minp"].loci), "n_snps_in_minp": len(minp),
        "seconds": round(seconds, 2), "fuma_file": dg.MetadataValue.path(str(fuma)),
        "n_sig_not_in_ld_panel": len(results["minp"].not_in_panel), "ld": f"{config.ld_method} r2 from {prefix}",
        "config": dg.MetadataValue.json(config.model_dump()),
        "preview": preview(home.query(
            "SELECT method, \"GenomicLocus\" AS locus, chr, start, \"end\", p, \"LeadSNPs\" AS lead_snps, dim "
            "FROM genomic_risk_loci WHERE cohort = ? AND model_id = ? ORDER BY method, p", [cohort, model_id]), 20),
        **table_metadata(home, GENOMIC_RISK_LOCI, **part)})
    for key, (_, attr) in list(tables.items())[1:]:
        yield dg.MaterializeResult(asset_key=key, metadata={
            **common, **{f"n_{attr}_{m}": len(getattr(r, attr)) for m, r in results.items()},
            **table_metadata(home, tables[key][0], **part)})


def _method_rows(rows: pd.DataFrame, method: str) -> pd.DataFrame:
    """Tag clumping output with its method; the joint test's rows have no single dim."""
    rows = rows.assign(method=method)
    if method == "multivariate":
        rows["dim"] = pd.array([pd.NA] * len(rows), dtype="Int64")
        if "dims" in rows.columns:
            rows["dims"] = ""
    return rows


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

