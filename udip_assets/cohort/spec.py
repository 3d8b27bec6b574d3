"""A cohort on disk: the ``cohort.yaml`` that names its scans, genotypes and tables.

A cohort is a folder. Its ``cohort.yaml`` (format documented in the README) says where the T1 scans
are (UK Biobank folder layout, or a manifest CSV), the PLINK genotype prefix, the UKBB-style
covariate table, the kinship table, and optionally a gene table and, for synthetic cohorts, the
truth file. Relative paths are relative to the folder holding ``cohort.yaml``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import yaml

from udip_assets.errors import CohortSpecError
from udip_assets.imaging.grids import Grid, grid_for_resolution

COHORT_FILE = "cohort.yaml"
UKBB_T1_RELPATH = Path("T1") / "T1_brain_to_MNI.nii.gz"
_UKBB_DIR = re.compile(r"^(?P<eid>\d+)_20252_(?P<instance>\d+)_0$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class CohortSpec:
    """What a cohort is made of. Paths are absolute once loaded.

    Attributes
    ----------
    name : str
        Cohort name; also its Dagster partition key and the ``cohort`` column of every table.
    root : Path
        The folder holding ``cohort.yaml``.
    resolution_mm : int
        1 (UK Biobank 182x218x182 grid) or 2 (91x109x91 demo grid).
    scans_dir : Path or None
        Folder with UK Biobank layout ``{eid}_20252_{instance}_0/T1/T1_brain_to_MNI.nii.gz``.
    scans_manifest : Path or None
        CSV with columns ``subject_id, visit, path`` (used instead of ``scans_dir``).
    genotypes : Path
        PLINK 1 prefix (``.bed/.bim/.fam``).
    covariates : Path
        CSV with UK Biobank showcase field names (``eid``, ``21003-2.0``, ...).
    relatedness : Path or None
        Kinship table in ``ukb_rel.dat`` form (``ID1 ID2 HetHet IBS0 Kinship``).
    genes : Path or None
        Gene table (``name chrom start end``), for annotation.
    truth : Path or None
        Synthetic cohorts only: planted causal SNPs.
    reference_loci : Path or None
        Previously reported lead SNPs (``snp chrom pos_bp [trait] [source]``), for novelty.
    gwas_catalog : Path or None
        A GWAS Catalog associations TSV export, for annotation and novelty.
    """

    name: str
    root: Path
    resolution_mm: int
    genotypes: Path
    covariates: Path
    scans_dir: Path | None = None
    scans_manifest: Path | None = None
    relatedness: Path | None = None
    genes: Path | None = None
    truth: Path | None = None
    reference_loci: Path | None = None
    gwas_catalog: Path | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise CohortSpecError(
                f"cohort name {self.name!r} in {self.root / COHORT_FILE} must be 1-64 letters, digits, "
                "'_', '-' or '.', starting with a letter or digit"
            )
        grid_for_resolution(self.resolution_mm)
        if (self.scans_dir is None) == (self.scans_manifest is None):
            raise CohortSpecError(
                f"{self.root / COHORT_FILE}: give exactly one of scans.dir (UK Biobank layout) or "
                "scans.manifest (CSV with subject_id, visit, path)"
            )

    @property
    def grid(self) -> Grid:
        return grid_for_resolution(self.resolution_mm)

    def to_yaml_dict(self) -> dict:
        """The ``cohort.yaml`` content, paths relative to ``root`` where they lie inside it."""

        def rel(p: Path | None) -> str | None:
            if p is None:
                return None
            try:
                return str(Path(p).relative_to(self.root))
            except ValueError:
                return str(p)

        scans = {"dir": rel(self.scans_dir)} if self.scans_dir else {"manifest": rel(self.scans_manifest)}
        out = {
            "name": self.name,
            "resolution_mm": self.resolution_mm,
            "scans": scans,
            "genotypes": {"plink": rel(self.genotypes)},
            "covariates": rel(self.covariates),
            "relatedness": rel(self.relatedness),
            "genes": rel(self.genes),
            "truth": rel(self.truth),
            "reference_loci": rel(self.reference_loci),
            "gwas_catalog": rel(self.gwas_catalog),
        }
        out.update(self.extra)
        return {k: v for k, v in out.items() if v is not None}


def _resolve(root: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    p = Path(str(value)).expanduser()
    return p if p.is_absolute() else (root / p)


def load_cohort(path: Path | str) -> CohortSpec:
    """Read a cohort from its folder or its ``cohort.yaml``, checking that the files it names exist.

    Raises
    ------
    CohortSpecError
        If the file is missing or malformed, or names files that do not exist; the message names
        the key and the path.
    """
    path = Path(path)
    yml = path / COHORT_FILE if path.is_dir() or not path.suffix else path
    if not yml.exists():
        raise CohortSpecError(f"no {COHORT_FILE} at {yml}; create one (see README, 'Bring your own cohort')")
    try:
        raw = yaml.safe_load(yml.read_text()) or {}
    except yaml.YAMLError as exc:
        raise CohortSpecError(f"{yml} is not valid YAML: {exc}") from exc
    root = yml.parent.resolve()
    for key in ("name", "resolution_mm", "scans", "genotypes", "covariates"):
        if key not in raw:
            raise CohortSpecError(f"{yml} lacks the required key {key!r}")
    scans = raw["scans"] or {}
    genotypes = raw["genotypes"] or {}
    if "plink" not in genotypes:
        raise CohortSpecError(f"{yml}: genotypes must give a PLINK prefix as genotypes.plink")
    known = {"name", "resolution_mm", "scans", "genotypes", "covariates", "relatedness", "genes", "truth",
             "reference_loci", "gwas_catalog"}
    spec = CohortSpec(
        name=str(raw["name"]),
        root=root,
        resolution_mm=int(raw["resolution_mm"]),
        scans_dir=_resolve(root, scans.get("dir")),
        scans_manifest=_resolve(root, scans.get("manifest")),
        genotypes=_resolve(root, genotypes["plink"]),
        covariates=_resolve(root, raw["covariates"]),
        relatedness=_resolve(root, raw.get("relatedness")),
        genes=_resolve(root, raw.get("genes")),
        truth=_resolve(root, raw.get("truth")),
        reference_loci=_resolve(root, raw.get("reference_loci")),
        gwas_catalog=_resolve(root, raw.get("gwas_catalog")),
        extra={k: v for k, v in raw.items() if k not in known},
    )
    _check_files(spec, yml)
    return spec


def _check_files(spec: CohortSpec, yml: Path) -> None:
    required = {"covariates": spec.covariates, "scans.dir": spec.scans_dir, "scans.manifest": spec.scans_manifest}
    optional = {"relatedness": spec.relatedness, "genes": spec.genes, "truth": spec.truth,
                "reference_loci": spec.reference_loci, "gwas_catalog": spec.gwas_catalog}
    for key, p in {**required, **optional}.items():
        if p is not None and not p.exists():
            raise CohortSpecError(f"{yml}: {key} names {p}, which does not exist; fix the path")
    for ext in (".bed", ".bim", ".fam"):
        f = spec.genotypes.with_name(spec.genotypes.name + ext)
        if not f.exists():
            raise CohortSpecError(f"{yml}: genotypes.plink names the prefix {spec.genotypes}, but {f} does not exist")


def write_cohort_yaml(spec: CohortSpec) -> Path:
    """Write ``cohort.yaml`` into ``spec.root``; returns its path."""
    out = spec.root / COHORT_FILE
    out.write_text(yaml.safe_dump(spec.to_yaml_dict(), sort_keys=False))
    return out


def find_scans(spec: CohortSpec) -> pd.DataFrame:
    """Every T1 scan the cohort names, one row per file: ``subject_id, visit, path``.

    UK Biobank layout: folders ``{eid}_20252_{instance}_0`` under ``scans_dir``; a folder without its
    ``T1/T1_brain_to_MNI.nii.gz`` still yields a row (validation then records it as unreadable).
    Manifest: the CSV's rows, paths relative to the cohort folder.
    """
    if spec.scans_dir is not None:
        rows = []
        for entry in sorted(spec.scans_dir.iterdir()):
            m = _UKBB_DIR.match(entry.name)
            if m and entry.is_dir():
                rows.append((m["eid"], int(m["instance"]), str(entry / UKBB_T1_RELPATH)))
        return pd.DataFrame(rows, columns=["subject_id", "visit", "path"])
    df = pd.read_csv(spec.scans_manifest, dtype={"subject_id": str})
    missing = {"subject_id", "visit", "path"} - set(df.columns)
    if missing:
        raise CohortSpecError(f"scan manifest {spec.scans_manifest} lacks column(s) {sorted(missing)}")
    df["path"] = [str(_resolve(spec.root, p)) for p in df["path"]]
    df["visit"] = df["visit"].astype(int)
    return df[["subject_id", "visit", "path"]].reset_index(drop=True)


def spec_summary(spec: CohortSpec) -> dict:
    """A flat, JSON-friendly description of the spec (for asset metadata and run rows)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(spec).items()}
