"""The warehouse schema: every table, its grain, its columns.

Key columns carry the same name in every table (``cohort``, ``subject_id``, ``visit``, ``split``,
``model_id``, ``dim``, ``snp``, ...). Each table's grain is stored as its DuckDB comment, so
``SELECT table_name, comment FROM duckdb_tables()`` documents the warehouse from inside it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd


@dataclass(frozen=True)
class Table:
    """A warehouse table.

    Parameters
    ----------
    name : str
        Table name.
    grain : str
        What one row is ("one row per ..."); stored as the table comment.
    columns : tuple of (name, duckdb type)
        Columns in order.
    partition_by : tuple of str
        Columns that identify one partition's rows; a re-run deletes exactly these rows and inserts
        the new ones in one transaction.
    key : tuple of str
        Columns that are unique together (checked after each write).
    """

    name: str
    grain: str
    columns: tuple[tuple[str, str], ...]
    partition_by: tuple[str, ...]
    key: tuple[str, ...]

    @property
    def column_names(self) -> list[str]:
        return [c for c, _ in self.columns]


_PC_COLUMNS = tuple((f"pc{i}", "DOUBLE") for i in range(1, 11))

SCANS = Table(
    name="scans",
    grain="one row per scan file found for a cohort (cohort, subject_id, visit, path)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER NOT NULL"),
        ("path", "VARCHAR NOT NULL"),
        ("status", "VARCHAR NOT NULL"),
        ("error", "VARCHAR"),
        ("shape", "VARCHAR"),
        ("voxel_mm", "VARCHAR"),
        ("n_nonzero", "BIGINT"),
        ("mean_intensity", "DOUBLE"),
        ("checked_at", "TIMESTAMP NOT NULL"),
    ),
    partition_by=("cohort",),
    key=("cohort", "path"),
)

SUBJECTS = Table(
    name="subjects",
    grain="one row per subject (eid) in a cohort, with the covariates of its kept visit, its split, "
    "and whether it was kept or why it was dropped",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER"),
        ("scan_path", "VARCHAR"),
        ("age_years", "DOUBLE"),
        ("sex", "INTEGER"),
        *_PC_COLUMNS,
        ("ethnicity", "INTEGER"),
        ("inv_cnr", "DOUBLE"),
        ("centre", "INTEGER"),
        ("head_size_scaling", "DOUBLE"),
        ("has_genotypes", "BOOLEAN NOT NULL"),
        ("n_visits", "INTEGER NOT NULL"),
        ("kept", "BOOLEAN NOT NULL"),
        ("drop_reason", "VARCHAR"),
        ("split", "VARCHAR"),
    ),
    partition_by=("cohort",),
    key=("cohort", "subject_id"),
)

PREPROCESSED_SCANS = Table(
    name="preprocessed_scans",
    grain="one row per kept subject's scan in a cohort: status 'ok' when it was preprocessed (padded, "
    "masked, z-scored) into the training cache, 'failed' with the reason when it could not be (no cache)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("subject_id", "VARCHAR NOT NULL"),
        ("visit", "INTEGER NOT NULL"),
        ("split", "VARCHAR NOT NULL"),
        ("source_path", "VARCHAR NOT NULL"),
        ("status", "VARCHAR NOT NULL"),
        ("reason", "VARCHAR"),
        ("cache_path", "VARCHAR"),
        ("shape", "VARCHAR"),
        ("n_mask_voxels", "BIGINT"),
        ("raw_mean", "DOUBLE"),
        ("raw_sd", "DOUBLE"),
        ("seconds", "DOUBLE"),
    ),
    partition_by=("cohort",),
    key=("cohort", "subject_id"),
)

# The paper's encoder width: the udips table always has these columns; a wider model adds more.
PAPER_UDIP_DIMS = 128
_UDIP_NAME = re.compile(r"udip_(\d{3,})$")


def udip_column(dim: int) -> str:
    """Column name of UDIP dimension ``dim`` (0-based): udip_000, udip_001, ..."""
    return f"udip_{dim:03d}"


def udip_columns(n_dims: int) -> tuple[str, ...]:
    """The first ``n_dims`` UDIP column names."""
    return tuple(udip_column(d) for d in range(n_dims))


def model_udip_columns(frame: pd.DataFrame) -> list[str]:
    """The UDIP columns of ``frame`` that hold values, in dim order.

    A model narrower than the table leaves the higher ``udip_*`` columns NULL: they are not
    dimensions of that model. ``frame`` is one model's rows.
    """
    cols = [c for c in frame.columns if _UDIP_NAME.match(c)]
    cols.sort(key=lambda c: int(_UDIP_NAME.match(c).group(1)))
    return [c for c in cols if frame[c].notna().any()]


UDIP_COLUMNS = udip_columns(PAPER_UDIP_DIMS)

TRAINING_EPOCHS = Table(
    name="training_epochs",
    grain="one row per training run x epoch (losses, learning rate, seconds, scans/s)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("run_id", "VARCHAR NOT NULL"),
        ("epoch", "INTEGER NOT NULL"),
        ("train_loss", "DOUBLE"),
        ("val_loss", "DOUBLE"),
        ("lr", "DOUBLE"),
        ("seconds", "DOUBLE"),
        ("scans_per_s", "DOUBLE"),
    ),
    partition_by=("cohort", "run_id"),
    key=("cohort", "run_id", "epoch"),
)

CHECKPOINTS = Table(
    name="checkpoints",
    grain="one row per saved model (model_id = training run + epoch); written by vit_ae_model only",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("run_id", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("epoch", "INTEGER NOT NULL"),
        ("path", "VARCHAR NOT NULL"),
        ("mlflow_run_id", "VARCHAR"),
        ("val_loss", "DOUBLE"),
        ("is_best", "BOOLEAN NOT NULL"),
        ("n_dims", "INTEGER"),
        ("config_json", "VARCHAR"),
        ("created_at", "TIMESTAMP"),
    ),
    partition_by=("cohort", "run_id"),
    key=("model_id",),
)

MODEL_SELECTION = Table(
    name="model_selection",
    grain="one row per checkpoint evaluated by the cohort's latest loci sweep (checkpoint_loci_sweep, its "
    "only writer): loci and significant SNPs its UDIPs find on the selection cohort; selected = the chosen one",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("run_id", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("epoch", "INTEGER NOT NULL"),
        ("selection_cohort", "VARCHAR NOT NULL"),
        ("selection_split", "VARCHAR NOT NULL"),
        ("n_subjects", "INTEGER"),
        ("loci_count", "INTEGER NOT NULL"),
        ("n_significant_snps", "INTEGER NOT NULL"),
        ("selected", "BOOLEAN NOT NULL"),
        ("evaluated_at", "TIMESTAMP"),
    ),
    partition_by=("cohort",),
    key=("cohort", "model_id"),
)


def udips_table(n_dims: int = PAPER_UDIP_DIMS, name: str = "udips") -> Table:
    """The UDIP table for models of up to ``n_dims`` dims (at least the paper's 128 columns).

    Writing a wider model's rows adds the missing ``udip_*`` columns (``ensure_schema``); a narrower
    model leaves the higher ones NULL and records its width in ``n_dims``.
    """
    writer = "udip_embeddings" if name == "udips" else "checkpoint_loci_sweep"
    return Table(
        name=name,
        grain=f"one row per subject x model_id: the ViT-UDIPs (n_dims of them) of the subject's kept scan and its "
        f"reconstruction loss; written by {writer} only",
        columns=(
            ("cohort", "VARCHAR NOT NULL"),
            ("model_id", "VARCHAR NOT NULL"),
            ("subject_id", "VARCHAR NOT NULL"),
            ("visit", "INTEGER"),
            ("split", "VARCHAR"),
            ("recon_loss", "DOUBLE"),
            ("n_dims", "INTEGER"),
            *((c, "FLOAT") for c in udip_columns(max(n_dims, PAPER_UDIP_DIMS))),
        ),
        partition_by=("cohort", "model_id"),
        key=("cohort", "model_id", "subject_id"),
    )


UDIPS = udips_table()
# The sweep's encodings of the selection cohort, one model_id per swept checkpoint; udip_embeddings
# copies the selected one's rows into ``udips`` instead of encoding the same scans again.
SWEEP_UDIPS = udips_table(name="sweep_udips")

UDIP_SPECTRUM = Table(
    name="udip_spectrum",
    grain="one row per cohort x model_id: the spread of the UDIPs over their dimensions (participation "
    "ratio, PCs holding 90 % / 99 % of the variance, PC1's share; explained = JSON list of the first 16 "
    "PCs' variance fractions), and how much of the subjects' departures from the cohort mean image the "
    "decoder reproduces (deviation_r2 over decoder_n_subjects GWAS-set scans; between-subject variance "
    "of the inputs and of the reconstructions, per template-brain voxel)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("n_subjects", "INTEGER NOT NULL"),
        ("n_dims", "INTEGER NOT NULL"),
        ("participation_ratio", "DOUBLE"),
        ("n_pcs_90", "INTEGER"),
        ("n_pcs_99", "INTEGER"),
        ("pc1_fraction", "DOUBLE"),
        ("explained", "VARCHAR"),
        ("decoder_n_subjects", "INTEGER"),
        ("input_between_variance", "DOUBLE"),
        ("recon_between_variance", "DOUBLE"),
        ("deviation_r2", "DOUBLE"),
        ("computed_at", "TIMESTAMP"),
    ),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id"),
)

_SNP_COLUMNS = (("snp", "VARCHAR NOT NULL"), ("chrom", "VARCHAR NOT NULL"), ("pos_bp", "BIGINT NOT NULL"),
                ("a1", "VARCHAR"), ("a2", "VARCHAR"))
_STAT_COLUMNS = (("beta", "DOUBLE"), ("se", "DOUBLE"), ("t", "DOUBLE"), ("p", "DOUBLE"))

GWAS_HITS = Table(
    name="gwas_hits",
    grain="one row per SNP x UDIP dim with p below the run's keep threshold, per cohort, model_id and "
    "chromosome (full summary statistics: Parquet per chromosome, view gwas_sumstats)",
    columns=(("cohort", "VARCHAR NOT NULL"), ("model_id", "VARCHAR NOT NULL"), *_SNP_COLUMNS,
             ("dim", "INTEGER NOT NULL"), *_STAT_COLUMNS),
    partition_by=("cohort", "model_id", "chrom"),
    key=("cohort", "model_id", "snp", "dim"),
)
MINP = Table(
    name="minp",
    grain="one row per SNP per cohort and model_id: the minimum p over the UDIP dims, its dim, beta, se",
    columns=(("cohort", "VARCHAR NOT NULL"), ("model_id", "VARCHAR NOT NULL"), *_SNP_COLUMNS,
             ("p", "DOUBLE"), ("dim", "INTEGER"), ("beta", "DOUBLE"), ("se", "DOUBLE"), ("maf", "DOUBLE"),
             ("significant", "BOOLEAN")),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "snp"),
)
MULTIVARIATE = Table(
    name="multivariate",
    grain="one row per SNP per cohort and model_id: the exact joint F-test of all UDIP dims (with covariates)",
    columns=(("cohort", "VARCHAR NOT NULL"), ("model_id", "VARCHAR NOT NULL"), *_SNP_COLUMNS,
             ("n", "INTEGER"), ("f", "DOUBLE"), ("df1", "INTEGER"), ("df2", "INTEGER"), ("p", "DOUBLE"),
             ("significant", "BOOLEAN")),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "snp"),
)
_FUMA_SNP = (("uniqID", "VARCHAR"), ("rsID", "VARCHAR NOT NULL"), ("chr", "VARCHAR NOT NULL"),
             ("pos", "BIGINT NOT NULL"), ("p", "DOUBLE"))
GENOMIC_RISK_LOCI = Table(
    name="genomic_risk_loci",
    grain="one row per genomic risk locus (FUMA GenomicRiskLoci.txt columns) per cohort, model_id and method "
    "(minp: clumped minimum p over the dims; multivariate: the joint test of all dims), plus the UDIP dim of "
    "its top SNP and every dim significant in it (minp only)",
    columns=(("cohort", "VARCHAR NOT NULL"), ("model_id", "VARCHAR NOT NULL"), ("GenomicLocus", "INTEGER NOT NULL"),
             *_FUMA_SNP, ("start", "BIGINT"), ("end", "BIGINT"), ("nSNPs", "INTEGER"), ("nGWASSNPs", "INTEGER"),
             ("nIndSigSNPs", "INTEGER"), ("IndSigSNPs", "VARCHAR"), ("nLeadSNPs", "INTEGER"),
             ("LeadSNPs", "VARCHAR"), ("dim", "INTEGER"), ("dims", "VARCHAR"), ("method", "VARCHAR")),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "method", "GenomicLocus"),
)
LEAD_SNPS = Table(
    name="lead_snps",
    grain="one row per lead SNP (FUMA leadSNPs.txt columns) per cohort, model_id and method",
    columns=(("cohort", "VARCHAR NOT NULL"), ("model_id", "VARCHAR NOT NULL"), ("No", "INTEGER NOT NULL"),
             ("GenomicLocus", "INTEGER NOT NULL"), *_FUMA_SNP, ("nIndSigSNPs", "INTEGER"), ("IndSigSNPs", "VARCHAR"),
             ("dim", "INTEGER"), ("method", "VARCHAR")),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "method", "rsID"),
)
IND_SIG_SNPS = Table(
    name="ind_sig_snps",
    grain="one row per independent significant SNP (FUMA IndSigSNPs.txt columns) per cohort, model_id and method",
    columns=(("cohort", "VARCHAR NOT NULL"), ("model_id", "VARCHAR NOT NULL"), ("No", "INTEGER NOT NULL"),
             ("GenomicLocus", "INTEGER NOT NULL"), *_FUMA_SNP, ("nSNPs", "INTEGER"), ("nGWASSNPs", "INTEGER"),
             ("dim", "INTEGER"), ("start", "BIGINT"), ("end", "BIGINT"), ("method", "VARCHAR")),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "method", "rsID"),
)
GENES = Table(
    name="genes",
    grain="one row per gene of a cohort's gene table (name, chrom, start_bp, end_bp, build)",
    columns=(("cohort", "VARCHAR NOT NULL"), ("name", "VARCHAR NOT NULL"), ("chrom", "VARCHAR NOT NULL"),
             ("start_bp", "BIGINT NOT NULL"), ("end_bp", "BIGINT NOT NULL"), ("build", "VARCHAR")),
    partition_by=("cohort",),
    key=("cohort", "name", "chrom", "start_bp"),
)
REFERENCE_LOCI = Table(
    name="reference_loci",
    grain="one row per previously reported lead SNP a cohort's loci are compared against",
    columns=(("cohort", "VARCHAR NOT NULL"), ("source", "VARCHAR NOT NULL"), ("snp", "VARCHAR NOT NULL"),
             ("chrom", "VARCHAR"), ("pos_bp", "BIGINT"), ("trait", "VARCHAR")),
    partition_by=("cohort",),
    key=("cohort", "source", "snp"),
)
GWAS_CATALOG = Table(
    name="gwas_catalog",
    grain="one row per GWAS Catalog association (the catalog's TSV export columns) loaded for a cohort",
    columns=(("cohort", "VARCHAR NOT NULL"), ("row_id", "INTEGER NOT NULL"), ("SNPS", "VARCHAR"),
             ("CHR_ID", "VARCHAR"), ("CHR_POS", "VARCHAR"), ("MAPPED_GENE", "VARCHAR"),
             ("DISEASE/TRAIT", "VARCHAR"), ("PUBMEDID", "VARCHAR"), ("STUDY", "VARCHAR"),
             ("P-VALUE", "VARCHAR"), ("MAPPED_TRAIT", "VARCHAR")),
    partition_by=("cohort",),
    key=("cohort", "row_id"),
)

PERDI_DIMS = Table(
    name="perdi_dims",
    grain="one row per cohort x model_id x UDIP dim interpreted by PerDI (perdi_maps): why it was chosen, the "
    "perturbation (1 SD of the dim), subjects, left/right symmetry of its map and the map's files",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("dim", "INTEGER NOT NULL"),
        ("chosen_because", "VARCHAR"),
        ("n_subjects", "INTEGER"),
        ("perturbation_sd", "DOUBLE"),
        ("max_abs_t", "DOUBLE"),
        ("symmetry", "DOUBLE"),
        ("nifti_path", "VARCHAR"),
        ("png_path", "VARCHAR"),
    ),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "dim"),
)

PERDI_REGIONS = Table(
    name="perdi_regions",
    grain="one row per cohort x model_id x PerDI dim x atlas region: voxels, share of the region the map "
    "affects, mean and peak t, and the region's rank for that dim (1 = most affected)",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("dim", "INTEGER NOT NULL"),
        ("atlas", "VARCHAR NOT NULL"),
        ("region", "VARCHAR NOT NULL"),
        ("hemisphere", "VARCHAR"),
        ("n_voxels", "BIGINT"),
        ("fraction", "DOUBLE"),
        ("mean_t", "DOUBLE"),
        ("peak_t", "DOUBLE"),
        ("rank", "INTEGER"),
        ("label", "INTEGER"),
        ("structure", "VARCHAR"),
        ("volume_mm3", "DOUBLE"),
        ("n_above", "BIGINT"),
        ("mean_abs_t", "DOUBLE"),
        ("score", "DOUBLE"),
    ),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "dim", "atlas", "region", "hemisphere"),
)

ATTENTION_SPOTLIGHT = Table(
    name="attention_spotlight",
    grain="one row per cohort x model_id x encoder layer x head x patch: the attention the patch receives "
    "(mean over query tokens and subjects), its centre in MNI mm, and whether it is a spotlight token",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("layer", "INTEGER NOT NULL"),
        ("head", "INTEGER NOT NULL"),
        ("patch_index", "INTEGER NOT NULL"),
        ("x_mm", "DOUBLE"),
        ("y_mm", "DOUBLE"),
        ("z_mm", "DOUBLE"),
        ("attention_in", "DOUBLE"),
        ("is_spotlight", "BOOLEAN"),
    ),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "layer", "head", "patch_index"),
)

QK_SPECTRUM = Table(
    name="qk_spectrum",
    grain="one row per cohort x model_id x encoder layer x head x k: the k-th singular value of W_K^T W_Q",
    columns=(
        ("cohort", "VARCHAR NOT NULL"),
        ("model_id", "VARCHAR NOT NULL"),
        ("layer", "INTEGER NOT NULL"),
        ("head", "INTEGER NOT NULL"),
        ("k", "INTEGER NOT NULL"),
        ("singular_value", "DOUBLE"),
    ),
    partition_by=("cohort", "model_id"),
    key=("cohort", "model_id", "layer", "head", "k"),
)

TABLES: dict[str, Table] = {
    t.name: t for t in (SCANS, SUBJECTS, PREPROCESSED_SCANS, TRAINING_EPOCHS, CHECKPOINTS, MODEL_SELECTION, UDIPS,
                        SWEEP_UDIPS, UDIP_SPECTRUM,
                        GWAS_HITS, MINP, MULTIVARIATE, GENOMIC_RISK_LOCI, LEAD_SNPS, IND_SIG_SNPS, GENES,
                        REFERENCE_LOCI, GWAS_CATALOG, PERDI_DIMS, PERDI_REGIONS, ATTENTION_SPOTLIGHT, QK_SPECTRUM)
}
