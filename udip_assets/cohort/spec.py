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

from udip_assets.cohort.covariates import missing_fields
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


@dataclass(frozen=True)
class CohortProblem:
    """One thing wrong with a ``cohort.yaml``: where, what was expected, what was found, the fix."""

    file: Path
    key: str
    expected: str
    found: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.key}: expected {self.expected}, found {self.found}; {self.fix}"


_REQUIRED = ("name", "resolution_mm", "scans", "genotypes", "covariates")
_OPTIONAL_FILES = ("relatedness", "genes", "truth", "reference_loci", "gwas_catalog")
_KNOWN = {*_REQUIRED, *_OPTIONAL_FILES}
_EXAMPLES = {"name": "my_cohort", "resolution_mm": "1", "scans": "{dir: scans}",
             "genotypes": "{plink: genotypes/cohort} (genotypes.plink: the .bed/.bim/.fam prefix)",
             "covariates": "covariates.csv"}


class _Problems(list):
    def add(self, yml: Path, key: str, expected: str, found: str, fix: str) -> None:
        self.append(CohortProblem(yml, key, expected, found, fix))


def _yaml_of(path: Path) -> Path:
    return path / COHORT_FILE if path.is_dir() or not path.suffix else path


def _read_raw(yml: Path, problems: _Problems) -> dict | None:
    if not yml.exists():
        problems.add(yml, "(file)", f"a {COHORT_FILE}", "no such file",
                     "create one (see README, 'Bring your own cohort')")
        return None
    try:
        raw = yaml.safe_load(yml.read_text())
    except yaml.YAMLError as exc:
        problems.add(yml, "(file)", "valid YAML", str(exc).replace("\n", " "), "fix the YAML syntax")
        return None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        problems.add(yml, "(file)", "a mapping of keys", type(raw).__name__, "write key: value lines")
        return None
    return raw


def _check_keys(yml: Path, raw: dict, problems: _Problems) -> None:
    for key in _REQUIRED:
        if raw.get(key) in (None, "", {}):
            problems.add(yml, key, f"a value (required), e.g. {key}: {_EXAMPLES[key]}", "nothing",
                         f"add the {key} key (see README, 'Bring your own cohort')")
    name = raw.get("name")
    if name not in (None, "") and not _NAME.match(str(name)):
        problems.add(yml, "name", "1-64 letters, digits, '_', '-' or '.', starting with a letter or digit",
                     repr(name), "rename the cohort")
    res = raw.get("resolution_mm")
    if res is not None and (isinstance(res, bool) or res not in (1, 2)):
        problems.add(yml, "resolution_mm", "1 (UK Biobank 182x218x182 grid) or 2 (91x109x91 demo grid)", repr(res),
                     "resample the scans to the MNI152 1 mm or 2 mm grid and say which")
    scans = raw.get("scans")
    if scans is not None and not isinstance(scans, dict):
        problems.add(yml, "scans", "a mapping with dir: or manifest:", repr(scans), "write scans: {dir: scans}")
    elif isinstance(scans, dict) and ("dir" in scans) == ("manifest" in scans):
        problems.add(yml, "scans", "exactly one of scans.dir (UK Biobank layout) or scans.manifest (CSV with "
                     "subject_id, visit, path)", f"keys {sorted(scans)}", "keep one of the two")
    defaults = raw.get("defaults")
    if defaults is not None and not (isinstance(defaults, dict)
                                     and all(isinstance(v, dict) for v in defaults.values())):
        problems.add(yml, "defaults", "a mapping of asset name -> config fields, e.g. defaults: {subjects: "
                     "{train_count: 120}}", repr(defaults)[:80], "write one mapping of fields per asset")
    genotypes = raw.get("genotypes")
    if genotypes is not None and not (isinstance(genotypes, dict) and genotypes.get("plink")):
        problems.add(yml, "genotypes", "a PLINK 1 prefix as genotypes.plink", repr(genotypes),
                     "write genotypes: {plink: genotypes/cohort} (the .bed/.bim/.fam without extension)")


def _named_paths(raw: dict, root: Path) -> dict[str, Path]:
    """Each file or folder the keys name (those well-formed), resolved against ``root``."""
    out = {key: _resolve(root, raw[key]) for key in ("covariates", *_OPTIONAL_FILES)
           if isinstance(raw.get(key), str | Path) and raw[key] != ""}
    scans = raw.get("scans")
    if isinstance(scans, dict):
        out.update({f"scans.{k}": _resolve(root, scans[k]) for k in ("dir", "manifest") if scans.get(k)})
    return out


def _check_files(raw: dict, root: Path, yml: Path, problems: _Problems) -> None:
    for key, p in _named_paths(raw, root).items():
        if not p.exists():
            problems.add(yml, key, "an existing path", f"{p} (does not exist)", "fix the path (relative to the "
                         "folder of cohort.yaml) or create the file")
    genotypes = raw.get("genotypes")
    if isinstance(genotypes, dict) and genotypes.get("plink"):
        prefix = _resolve(root, genotypes["plink"])
        for ext in (".bed", ".bim", ".fam"):
            f = prefix.with_name(prefix.name + ext)
            if not f.exists():
                problems.add(yml, "genotypes.plink", f"the prefix of a {ext} file (PLINK 1 .bed/.bim/.fam)",
                             f"{prefix} without {f.name}", "point genotypes.plink at the fileset prefix")
        for ext, what in ((".fam", "sample"), (".bim", "variant")):
            f = prefix.with_name(prefix.name + ext)
            if f.is_file() and not _has_data_line(f, header=False):
                problems.add(yml, "genotypes.plink", f"a {ext} file with one line per {what}",
                             f"{f} (empty)", "export the genotypes again (plink2 --make-bed)")
    scans = raw.get("scans")
    scans_dir = _resolve(root, scans.get("dir")) if isinstance(scans, dict) and scans.get("dir") else None
    if scans_dir is not None and scans_dir.is_dir() and not _has_ukbb_scan_folder(scans_dir):
        problems.add(yml, "scans.dir", "folders {eid}_20252_{instance}_0 holding T1/T1_brain_to_MNI.nii.gz "
                     "(UK Biobank's layout of field 20252)", f"{scans_dir} holds none",
                     "point scans.dir at the folder of the unzipped 20252 downloads, or list the scans in "
                     "scans.manifest")
    manifest = _resolve(root, scans.get("manifest")) if isinstance(scans, dict) and scans.get("manifest") else None
    if manifest is not None and manifest.is_file() and not _has_data_line(manifest, header=True):
        problems.add(yml, "scans.manifest", "a CSV subject_id,visit,path with a row per scan", f"{manifest} "
                     "(no rows)", "list the cohort's scans in it")
    covariates = _named_paths(raw, root).get("covariates")
    if covariates is not None and covariates.is_file():
        header = covariates.open().readline().strip().split(",")
        if "eid" not in header:
            problems.add(yml, "covariates", "a CSV whose first line names an 'eid' column (UK Biobank showcase "
                         "field names)", f"columns {header[:6]}", "rename the subject id column to eid")
        elif missing := missing_fields(header):
            problems.add(yml, "covariates", "a column for each covariate field, named field-instance.array as "
                         "in a UK Biobank export", f"{covariates.name} without {', '.join(missing)}",
                         "add the fields to the export (or rename its columns to the UK Biobank names)")
        elif not _has_data_line(covariates, header=True):
            problems.add(yml, "covariates", "a row per subject under the header", f"{covariates} (header only)",
                         "export the covariates of the cohort's subjects")


def _has_data_line(path: Path, header: bool) -> bool:
    """Whether ``path`` has a non-blank line (after the first one when ``header``); reads at most two."""
    with open(path, errors="replace") as fh:
        lines = (line for line in fh if line.strip())
        if header:
            next(lines, None)
        return next(lines, None) is not None


def _has_ukbb_scan_folder(folder: Path) -> bool:
    """Whether ``folder`` holds at least one ``{eid}_20252_{instance}_0`` folder (stops at the first)."""
    import os

    with os.scandir(folder) as entries:
        return any(_UKBB_DIR.match(e.name) and e.is_dir() for e in entries)


def check_cohort(path: Path | str) -> tuple[CohortSpec | None, list[CohortProblem]]:
    """Read a cohort's ``cohort.yaml`` and list every problem with it (empty when it is usable).

    Returns the spec (None when there is any problem) and the problems: missing or malformed
    keys, an unsupported resolution, files that do not exist, a covariate table without ``eid``.
    """
    yml = _yaml_of(Path(path))
    problems = _Problems()
    raw = _read_raw(yml, problems)
    if raw is None:
        return None, list(problems)
    root = yml.parent.resolve()
    _check_keys(yml, raw, problems)
    _check_files(raw, root, yml, problems)
    if problems:
        return None, list(problems)
    scans = raw["scans"]
    spec = CohortSpec(
        name=str(raw["name"]),
        root=root,
        resolution_mm=int(raw["resolution_mm"]),
        scans_dir=_resolve(root, scans.get("dir")),
        scans_manifest=_resolve(root, scans.get("manifest")),
        genotypes=_resolve(root, raw["genotypes"]["plink"]),
        covariates=_resolve(root, raw["covariates"]),
        **{key: _resolve(root, raw.get(key)) for key in _OPTIONAL_FILES},
        extra={k: v for k, v in raw.items() if k not in _KNOWN},
    )
    return spec, []


def format_problems(problems: list[CohortProblem]) -> str:
    """The problems as one message, one numbered line each."""
    head = f"{len(problems)} problem(s) in {problems[0].file}:" if problems else "no problems"
    return "\n".join([head, *(f"  {i}. {p.key}: expected {p.expected}; found {p.found}; fix: {p.fix}"
                               for i, p in enumerate(problems, 1))])


def load_cohort(path: Path | str) -> CohortSpec:
    """Read a cohort from its folder or its ``cohort.yaml``, checking that the files it names exist.

    Raises
    ------
    CohortSpecError
        Listing every problem :func:`check_cohort` finds (file, key, expected, found, fix);
        ``.problems`` holds them.
    """
    spec, problems = check_cohort(path)
    if problems:
        raise CohortSpecError(format_problems(problems), problems)
    return spec


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
