"""Score discovered loci against a synthetic cohort's planted truth.

Notes
-----
A planted SNP is *found* when a genomic risk locus on its chromosome spans its position
(``start <= pos_bp <= end``), the rule the loci issue states. A locus is *true* when a planted SNP lies
within its span widened by ``near_bp`` on each side (LD blocks of a causal SNP can end just short of
it when the causal SNP itself is not the lead). Recall is over planted SNPs marked ``detectable``;
precision is over all loci.

:func:`encoding_diagnostics` asks the step before: how much of each planted region's measured
phenotype the UDIPs still carry. A target the UDIPs cannot predict (cross-validated R2 near 0) is
lost in the encoder, and no GWAS of the UDIPs can find the SNPs planted on it. Like the scores
above it takes the truth as an argument; the pipeline never calls it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from udip_assets.errors import UdipConfigError

if TYPE_CHECKING:
    from udip_assets.interpret.qc import UdipSpectrum

RIDGE_ALPHAS = np.logspace(-3, 3, 13)
DIAGNOSTIC_COLUMNS = ("target", "n_subjects", "cv_r2", "best_dim", "best_r")


@dataclass(frozen=True)
class TruthScore:
    """Recall of detectable planted SNPs and precision of loci."""

    n_detectable: int
    n_found_detectable: int
    n_found_any: int
    n_loci: int
    n_true_loci: int
    found: tuple[str, ...]
    missed: tuple[str, ...]

    @property
    def recall(self) -> float:
        return self.n_found_detectable / self.n_detectable if self.n_detectable else float("nan")

    @property
    def precision(self) -> float:
        return self.n_true_loci / self.n_loci if self.n_loci else float("nan")


def load_truth(path: Path) -> pd.DataFrame:
    """The ``causal`` list of a ``truth.json`` as a DataFrame."""
    return pd.DataFrame(json.loads(Path(path).read_text())["causal"])


def score_loci(loci: pd.DataFrame, truth: pd.DataFrame, near_bp: int = 250_000) -> TruthScore:
    """Compare FUMA-style loci (``chr, start, end``) with planted SNPs (``snp, chrom, pos_bp, detectable``)."""
    def spans(pos_col_lo, pos_col_hi, chrom, pos):
        same = loci["chr"].astype(int) == int(chrom)
        return bool(((loci.loc[same, pos_col_lo] <= pos) & (pos <= loci.loc[same, pos_col_hi])).any())

    widened = loci.assign(lo=loci["start"] - near_bp, hi=loci["end"] + near_bp)
    found = [r.snp for r in truth.itertuples() if len(loci) and spans("start", "end", r.chrom, r.pos_bp)]
    detectable = truth[truth["detectable"]]
    n_true = sum(
        any(int(t.chrom) == int(row.chr) and row.lo <= t.pos_bp <= row.hi for t in truth.itertuples())
        for row in widened.itertuples()
    )
    return TruthScore(
        n_detectable=len(detectable),
        n_found_detectable=int(detectable["snp"].isin(found).sum()),
        n_found_any=len(found),
        n_loci=len(loci),
        n_true_loci=int(n_true),
        found=tuple(found),
        missed=tuple(detectable.loc[~detectable["snp"].isin(found), "snp"]),
    )


def image_region_phenotypes(path: Path, truth: pd.DataFrame) -> pd.DataFrame:
    """The planted phenotypes as measured in each subject's image (``truth_image_volumes.tsv``).

    Parameters
    ----------
    path : Path
        The cohort's ``truth_image_volumes.tsv`` (``udip synth``): per scan (eid, visit), each
        region's ``<region>_mm3`` partial volume and ``<region>_stretch`` measured through the
        subject's warp, i.e. what the rendered image shows.
    truth : DataFrame
        The planted effects (``region``, ``kind``), from :func:`load_truth`.

    Returns
    -------
    DataFrame
        One row per subject (its last visit, the one the pipeline keeps), indexed by subject id
        (str): ``vol_<region>`` (natural-log mm^3) for each region with a volume effect and
        ``stretch_<region>`` for each with a shape effect. A GWAS of these is the ceiling a GWAS of
        UDIPs can reach: the signal that is in the images.
    """
    table = pd.read_csv(path, sep="\t", dtype={"eid": str})
    if not {"eid", "visit"} <= set(table.columns):
        raise UdipConfigError(f"{path} lacks columns eid, visit; is it a udip synth truth_image_volumes.tsv?")
    last = table.sort_values(["eid", "visit"]).drop_duplicates("eid", keep="last").set_index("eid")
    out = {}
    for rec in truth.drop_duplicates(["region", "kind"]).itertuples():
        source = f"{rec.region}_mm3" if rec.kind == "volume" else f"{rec.region}_stretch"
        if source not in last.columns:
            raise UdipConfigError(f"{path} has no column {source!r} for the planted {rec.kind} effect on "
                                  f"{rec.region}; regenerate the cohort with `udip synth --force`")
        values = last[source].astype("float64")
        out[f"vol_{rec.region}" if rec.kind == "volume" else f"stretch_{rec.region}"] = (
            np.log(values) if rec.kind == "volume" else values)
    return pd.DataFrame(out, index=pd.Index(last.index.astype(str), name="subject_id"))


def _aligned(udips: pd.DataFrame, targets: pd.DataFrame, n_folds: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``udips`` and ``targets`` on their common subjects, sorted by id (fold assignment ignores row order)."""
    if n_folds < 2:
        raise UdipConfigError(f"n_folds must be at least 2, got {n_folds}; 5 is the usual choice")
    for name, frame in (("udips", udips), ("targets", targets)):
        if not frame.index.is_unique:
            raise UdipConfigError(f"{name} must have one row per subject, got {int(frame.index.duplicated().sum())} "
                                  "repeated index values; index both frames by subject id")
        if frame.shape[1] == 0:
            raise UdipConfigError(f"{name} must have at least one column, got none")
    common = udips.index.intersection(targets.index).sort_values()
    x, y = udips.loc[common].astype("float64"), targets.loc[common].astype("float64")
    if not np.isfinite(x.to_numpy()).all():
        raise UdipConfigError("udips must be finite on the subjects shared with targets; drop the dimensions "
                              "the model does not fill (all-NULL columns) or the bad rows")
    if len(common) < max(n_folds, 3):
        raise UdipConfigError(f"udips and targets share {len(common)} subjects, need at least {max(n_folds, 3)} "
                              f"for {n_folds}-fold cross-validation; are both indexed by the same subject ids?")
    return x, y


def _pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each column of ``x`` (n, d) with ``y`` (n,); NaN for a constant column."""
    xc, yc = x - x.mean(axis=0), y - y.mean()
    denom = np.sqrt((xc**2).sum(axis=0) * (yc**2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, xc.T @ yc / np.where(denom > 0, denom, 1.0), np.nan)  # (d,)


def encoding_diagnostics(udips: pd.DataFrame, targets: pd.DataFrame, n_folds: int = 5,
                         seed: int = 0) -> pd.DataFrame:
    """How well the UDIPs predict each planted region's measured phenotype (evaluation only).

    Parameters
    ----------
    udips : DataFrame (n_subjects, n_dims)
        Index = subject id, one column per UDIP dimension (finite).
    targets : DataFrame (n_subjects, n_targets)
        Index = subject id, one column per measured phenotype (e.g. ``vol_hippocampus``, log volume),
        as :func:`image_region_phenotypes` returns. Missing values drop that subject for that target.
    n_folds : int
        Cross-validation folds (>= 2).
    seed : int
        Seed of the fold shuffle.

    Returns
    -------
    DataFrame
        One row per target column: ``target``, ``n_subjects`` (after the inner join on the index and
        dropping the target's missing values), ``cv_r2``, ``best_dim`` (the udips column with the
        largest absolute Pearson r with the target) and ``best_r`` (its signed r).

    Notes
    -----
    ``cv_r2`` is ``1 - SSE / SST`` of out-of-fold predictions (``cross_val_predict`` over
    ``KFold(n_folds, shuffle=True, random_state=seed)``), with SST about the target's mean over all
    subjects: 0 means no better than the mean, and it can be negative. Each fold's model is a
    ``Pipeline(StandardScaler, RidgeCV(alphas=logspace(-3, 3, 13)))``: standardising inside the
    pipeline keeps the held-out fold out of the scaling, and RidgeCV chooses the penalty by
    leave-one-out within the training folds, so a weak linear signal spread over many dimensions is
    recovered without overfitting 128 coefficients. Subjects are sorted by id before folding, so the
    answer does not depend on row order. The best single dimension shows whether the signal sits in
    one UDIP (what a per-dimension GWAS needs) or only in a combination of them.
    """
    from sklearn.linear_model import RidgeCV  # evaluation-only: keeps sklearn off the pipeline's imports
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    x, y = _aligned(udips, targets, n_folds)
    rows = []
    for target in y.columns:
        keep = y[target].notna().to_numpy()
        xt, yt = x.to_numpy()[keep], y[target].to_numpy()[keep]
        if keep.sum() < max(n_folds, 3) or np.unique(yt).size < 2:
            raise UdipConfigError(f"target {target!r} must vary over at least {max(n_folds, 3)} subjects, got "
                                  f"{int(keep.sum())} non-missing values, {np.unique(yt).size} distinct; "
                                  "drop constant or empty target columns")
        model = Pipeline([("scale", StandardScaler()), ("ridge", RidgeCV(alphas=RIDGE_ALPHAS))])
        folds = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
        pred = cross_val_predict(model, xt, yt, cv=folds)
        r2 = 1.0 - np.sum((yt - pred) ** 2) / np.sum((yt - yt.mean()) ** 2)
        r = _pearson(xt, yt)
        best = int(np.nanargmax(np.abs(r))) if np.isfinite(r).any() else None
        rows.append({"target": str(target), "n_subjects": int(keep.sum()), "cv_r2": float(r2),
                     "best_dim": None if best is None else str(x.columns[best]),
                     "best_r": float("nan") if best is None else float(r[best])})
    return pd.DataFrame(rows, columns=list(DIAGNOSTIC_COLUMNS))


def format_diagnostics(table: pd.DataFrame, spectrum: UdipSpectrum | None = None) -> str:
    """:func:`encoding_diagnostics`' table as aligned text, one line per target, and the UDIP spectrum.

    R2 and r are shown to 2 decimals. With ``spectrum`` (from
    :func:`udip_assets.interpret.qc.effective_rank`) a last line reads
    "UDIP effective rank: participation ratio 1.8; 3 PCs hold 90 %, 16 hold 99 %; PC1 60 %".
    """
    header = ("target", "n_subjects", "cv_r2", "best_dim", "best_r")
    body = [(str(r.target), str(int(r.n_subjects)), f"{r.cv_r2:.2f}", "-" if pd.isna(r.best_dim) else str(r.best_dim),
             f"{r.best_r:.2f}") for r in table.itertuples(index=False)]
    widths = [max(len(row[i]) for row in (header, *body)) for i in range(len(header))]
    left = (True, False, False, True, False)  # text columns left-aligned, numbers right-aligned
    lines = ["  ".join(cell.ljust(w) if lj else cell.rjust(w) for cell, w, lj in zip(row, widths, left, strict=True))
             .rstrip() for row in (header, *body)]
    if spectrum is not None:
        lines.append(f"UDIP effective rank: participation ratio {spectrum.participation_ratio:.1f}; "
                     f"{spectrum.n_pcs_90} PCs hold 90 %, {spectrum.n_pcs_99} hold 99 %; "
                     f"PC1 {100 * spectrum.pc1_fraction:.0f} %")
    return "\n".join(lines)
