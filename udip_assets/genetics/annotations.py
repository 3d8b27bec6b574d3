"""Annotation inputs of the loci: gene tables, previously reported loci, GWAS Catalog associations.

Three kinds of user-supplied file, each validated at the door with a message naming the file,
the column and the fix:

gene table
    Tab-separated with a header ``name chrom start end [build]`` (the synthetic cohort's
    ``genes.tsv``; for real data, a GENCODE-derived table), or a 4-column BED
    (``chrom start end name``, no header, 0-based start).
reference loci
    Tab-separated with a header ``snp chrom pos_bp [trait] [source]``: lead SNPs of earlier studies.
GWAS Catalog
    The catalog's own "All associations" TSV export (columns ``SNPS``, ``CHR_ID``, ``CHR_POS``,
    ``MAPPED_GENE``, ``DISEASE/TRAIT``, ``PUBMEDID``, ...); extra columns are ignored.

The synthetic cohort writes a reference file (its planted loci marked "previously reported") and
a small catalog file (brain-structure associations at those loci, plus unrelated traits elsewhere),
so that novelty can be checked against a known answer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.atomic import write_tsv_atomic as write_tsv_atomic  # re-exported: callers import it from here
from udip_assets.errors import CohortSpecError

GENE_COLUMNS = ("name", "chrom", "start_bp", "end_bp", "build")
REFERENCE_COLUMNS = ("source", "snp", "chrom", "pos_bp", "trait")
CATALOG_COLUMNS = ("SNPS", "CHR_ID", "CHR_POS", "MAPPED_GENE", "DISEASE/TRAIT", "PUBMEDID", "STUDY", "P-VALUE",
                   "MAPPED_TRAIT")
CATALOG_REQUIRED = ("SNPS", "CHR_ID", "CHR_POS", "DISEASE/TRAIT")
_CHR_PREFIX = r"^chr"


def _clean_chrom(chrom: pd.Series) -> pd.Series:
    return chrom.astype(str).str.strip().str.replace(_CHR_PREFIX, "", regex=True, case=False)


def _require_columns(df: pd.DataFrame, required: tuple[str, ...], path: Path, what: str) -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise CohortSpecError(f"{what} {path} lacks column(s) {missing}; it has {list(df.columns)}. "
                              f"Expected a tab-separated file with a header naming {list(required)}")


def _int_column(df: pd.DataFrame, col: str, path: Path, what: str) -> pd.Series:
    values = pd.to_numeric(df[col], errors="coerce")
    bad = df.loc[values.isna(), col]
    if len(bad):
        raise CohortSpecError(f"{what} {path}: column {col!r} holds {len(bad)} non-integer value(s), e.g. "
                              f"{bad.astype(str).head(3).tolist()}; fix or remove those rows")
    return values.astype(np.int64)


def read_gene_table(path: Path | str, build: str = "unknown") -> pd.DataFrame:
    """Read a gene table (TSV with header, or 4-column BED) into ``name, chrom, start_bp, end_bp, build``.

    Parameters
    ----------
    path : path
        The file; ``.bed`` files are read as BED (0-based starts, converted to 1-based).
    build : str
        Genome build to record where the file has no ``build`` column.

    Raises
    ------
    CohortSpecError
        Missing columns, non-integer coordinates or a gene ending before it starts.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortSpecError(f"gene table {path} does not exist; point cohort.yaml 'genes' at a gene table")
    if path.suffix.lower() == ".bed":
        raw = pd.read_csv(path, sep="\t", header=None, comment="#", dtype=str, usecols=range(4))
        df = pd.DataFrame({"name": raw[3], "chrom": raw[0], "start": pd.to_numeric(raw[1]) + 1, "end": raw[2]})
    else:
        df = pd.read_csv(path, sep="\t", dtype=str, comment="#")
        _require_columns(df, ("name", "chrom", "start", "end"), path, "gene table")
    out = pd.DataFrame({
        "name": df["name"].astype(str), "chrom": _clean_chrom(df["chrom"]),
        "start_bp": _int_column(df, "start", path, "gene table"), "end_bp": _int_column(df, "end", path, "gene table"),
        "build": df["build"].astype(str) if "build" in df.columns else build,
    })
    backwards = out[out["end_bp"] < out["start_bp"]]
    if len(backwards):
        raise CohortSpecError(f"gene table {path}: {len(backwards)} gene(s) end before they start, e.g. "
                              f"{backwards['name'].head(3).tolist()}; check the start/end columns")
    return out.drop_duplicates(["name", "chrom", "start_bp"]).reset_index(drop=True)


def read_reference_loci(path: Path | str, source: str | None = None) -> pd.DataFrame:
    """Read previously reported lead SNPs (``snp chrom pos_bp [trait] [source]``) into REFERENCE_COLUMNS."""
    path = Path(path)
    if not path.is_file():
        raise CohortSpecError(f"reference loci file {path} does not exist; fix cohort.yaml 'reference_loci'")
    df = pd.read_csv(path, sep="\t", dtype=str)
    _require_columns(df, ("snp", "chrom", "pos_bp"), path, "reference loci file")
    out = pd.DataFrame({
        "source": df["source"] if "source" in df.columns else (source or path.stem),
        "snp": df["snp"].astype(str), "chrom": _clean_chrom(df["chrom"]),
        "pos_bp": _int_column(df, "pos_bp", path, "reference loci file"),
        "trait": df["trait"] if "trait" in df.columns else None,
    })
    return out.drop_duplicates(["source", "snp"]).reset_index(drop=True)


def reference_loci_from_truth(truth: pd.DataFrame) -> pd.DataFrame:
    """The planted SNPs a synthetic cohort marks ``reported`` (as if found by an earlier study)."""
    reported = truth[truth["reported"].astype(bool)] if "reported" in truth.columns else truth.iloc[:0]
    return pd.DataFrame({"source": "synthetic_reported", "snp": reported["snp"].astype(str),
                         "chrom": reported["chrom"].astype(str), "pos_bp": reported["pos_bp"].astype(np.int64),
                         "trait": reported["region"].astype(str) + " " + reported["kind"].astype(str)})


def read_gwas_catalog(path: Path | str) -> pd.DataFrame:
    """Read a GWAS Catalog TSV export, keeping CATALOG_COLUMNS (absent optional ones as empty) plus ``row_id``.

    Rows keep the catalog's text (``CHR_POS`` may hold several positions or be empty); the dbt
    staging model casts and drops what cannot be placed.
    """
    path = Path(path)
    if not path.is_file():
        raise CohortSpecError(f"GWAS Catalog file {path} does not exist; fix cohort.yaml 'gwas_catalog'")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, quoting=3)
    _require_columns(df, CATALOG_REQUIRED, path, "GWAS Catalog file")
    out = df.reindex(columns=list(CATALOG_COLUMNS)).replace({"": None})
    out.insert(0, "row_id", np.arange(1, len(out) + 1))
    return out


_BRAIN_TRAITS = ("Brain region volumes", "Subcortical volume", "Brain morphology", "Lateral ventricle volume")
_OTHER_TRAITS = ("Height", "Body mass index", "LDL cholesterol levels", "Type 2 diabetes", "Blood pressure",
                 "Educational attainment", "Red blood cell count", "Asthma")


def demo_gwas_catalog(truth: pd.DataFrame, variants: pd.DataFrame, genes: pd.DataFrame,
                      rng: np.random.Generator, n_other: int = 40) -> pd.DataFrame:
    """A small GWAS Catalog export for a synthetic cohort.

    Brain-structure associations at the planted SNPs marked ``reported``, and ``n_other``
    associations with unrelated traits at random SNPs (some near unreported planted SNPs, so that
    a novel locus may carry catalog traits yet stay novel: none of them is a brain structure).
    """
    rows = []
    for r in truth[truth["reported"].astype(bool)].itertuples():
        rows.append((r.snp, r.chrom, r.pos_bp, rng.choice(_BRAIN_TRAITS), "5E-12"))
    picks = variants.iloc[rng.choice(len(variants), size=min(n_other, len(variants)), replace=False)]
    for v in picks.itertuples():
        p_text = f"{rng.uniform(1, 9):.0f}E-{rng.integers(8, 30)}"
        rows.append((v.snp, v.chrom, v.pos_bp, rng.choice(_OTHER_TRAITS), p_text))
    for r in truth[~truth["reported"].astype(bool)].head(2).itertuples():  # unrelated traits near novel loci
        same_chrom = variants["chrom"].astype(str) == str(r.chrom)
        near = variants[same_chrom & ((variants["pos_bp"] - r.pos_bp).abs() < 100_000)]
        if len(near):
            v = near.iloc[int(rng.integers(len(near)))]
            rows.append((v["snp"], v["chrom"], v["pos_bp"], rng.choice(_OTHER_TRAITS), "2E-9"))
    df = pd.DataFrame(rows, columns=["SNPS", "CHR_ID", "CHR_POS", "DISEASE/TRAIT", "P-VALUE"])
    df["MAPPED_GENE"] = [_nearest_gene(genes, c, p) for c, p in zip(df["CHR_ID"], df["CHR_POS"], strict=True)]
    df["PUBMEDID"] = rng.integers(20_000_000, 39_000_000, size=len(df)).astype(str)
    df["STUDY"] = "Synthetic association study of " + df["DISEASE/TRAIT"].str.lower()
    df["MAPPED_TRAIT"] = df["DISEASE/TRAIT"].str.lower()
    return df.loc[:, list(CATALOG_COLUMNS)].sort_values(["CHR_ID", "CHR_POS"], ignore_index=True)


def _nearest_gene(genes: pd.DataFrame, chrom, pos: int) -> str:
    g = genes[genes["chrom"].astype(str) == str(chrom)]
    if g.empty:
        return ""
    dist = np.maximum.reduce([g["start"].to_numpy() - pos, pos - g["end"].to_numpy(), np.zeros(len(g), int)])
    return str(g["name"].iloc[int(np.argmin(dist))])
