"""Domain exceptions.

Every message names the file, subject or parameter at fault, what was expected, what came, and
the fix. Configuration errors subclass ``ValueError`` (raised before any work starts); data and
environment errors subclass ``RuntimeError``.
"""


class UdipConfigError(ValueError):
    """A configuration value is invalid; raised before any work starts."""


class CohortSpecError(UdipConfigError):
    """A ``cohort.yaml`` is missing, malformed, or names files that do not exist.

    ``problems`` lists each one (:class:`udip_assets.cohort.spec.CohortProblem`) when the error
    comes from reading the file.
    """

    def __init__(self, message: str, problems: list | None = None) -> None:
        super().__init__(message)
        self.problems = list(problems or [])


class ScanError(RuntimeError):
    """One scan cannot be used (unreadable, wrong grid, non-finite, empty).

    Ingest records it as a row with its reason and goes on; it never stops a run.
    """


class GridMismatchError(ScanError):
    """A scan is on a different voxel grid or affine than the one asked for."""


class GenotypeError(RuntimeError):
    """Genotype files are inconsistent (sizes, sample IDs, variant table)."""


class SummaryStatsError(RuntimeError):
    """Summary statistics (a minP table, a FUMA loci file) lack a column or hold unusable values."""


class CovariateError(RuntimeError):
    """The covariate table lacks a required field or holds unusable values."""


class WarehouseError(RuntimeError):
    """The DuckDB warehouse is missing, locked, or holds an unexpected schema."""


def require_field(ok: bool, name: str, expected: str, got: object, fix: str = "", *, owner: str) -> None:
    """Raise ``UdipConfigError`` unless ``ok``: '<owner>.<name> must be <expected>, got <got>; <fix>'.

    Configuration dataclasses bind ``owner`` once: ``_require = partial(require_field, owner="GwasConfig")``.
    """
    if not ok:
        hint = f"; {fix}" if fix else ""
        raise UdipConfigError(f"{owner}.{name} must be {expected}, got {got!r}{hint}")
