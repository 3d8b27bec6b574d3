"""The null model of the scan: samples aligned by IID, covariates projected out once.

:func:`align_samples` matches genotypes, phenotypes and covariates by IID and refuses what cannot
be analysed (naming the samples); :class:`Residualizer` is the orthonormal basis Q of ``[1, C]``
(tensorqtl's residualizer), applied to the phenotypes once and to every SNP through ``Q'g``;
:func:`null_model` holds everything about the samples that does not depend on the SNP.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from udip_assets.errors import CovariateError
from udip_assets.genetics import multivariate as mv
from udip_assets.genetics.genotype_stream import GenotypeSource

_SHOW_IDS = 5


class Residualizer:
    """Orthonormal basis of the covariate space ``[1, C]``, computed once per scan.

    Parameters
    ----------
    covariates : pd.DataFrame
        (n_samples, k) numeric covariates without the intercept (added here).
    tol : float
        A column whose residual, after projecting out the intercept and the columns kept before
        it, is smaller than ``tol`` times its centred norm is dropped as collinear.

    Attributes
    ----------
    q : np.ndarray
        (n_samples, n_columns) float64 orthonormal basis; column 0 is the intercept direction.
    kept : tuple of str
        Covariates in the model, in input order.
    dropped : dict
        Dropped covariate -> reason ('constant', or 'collinear with ...').

    Raises
    ------
    CovariateError
        Non-finite values (naming columns and subjects), every covariate dropped, or no residual
        degrees of freedom left.

    Notes
    -----
    Columns enter one at a time by classical Gram-Schmidt with re-orthogonalisation (CGS2,
    accurate to machine precision like Householder QR); a constant column or one in the span of
    those before it is dropped with a warning that names it, so the fit stays full rank and the
    degrees of freedom count only the columns kept (df = n - n_columns - 1 for each SNP).
    """

    def __init__(self, covariates: pd.DataFrame, tol: float = 1e-6) -> None:
        x = _covariate_values(covariates)
        n = x.shape[0]
        basis = [np.full(n, 1.0 / np.sqrt(n))]
        kept, dropped = [], {}
        for j, name in enumerate(map(str, covariates.columns)):
            col = x[:, j]
            spread = np.linalg.norm(col - col.mean())
            if spread <= 1e-12 * max(np.abs(col).max(), 1.0) * np.sqrt(n):
                dropped[name] = "constant"
                continue
            q = np.column_stack(basis)
            resid = col - q @ (q.T @ col)
            resid -= q @ (q.T @ resid)
            norm = np.linalg.norm(resid)
            if norm <= tol * spread:
                dropped[name] = "collinear with " + _collinear_partners(col, x, covariates, kept)
                continue
            basis.append(resid / norm)
            kept.append(name)
        if covariates.shape[1] and not kept:
            raise CovariateError(f"every covariate column is constant or collinear ({dropped}); nothing "
                                 "sane remains to adjust for: fix the covariate table or pass none")
        self.q = np.column_stack(basis)
        self.kept, self.dropped = tuple(kept), dropped
        if n - self.n_columns - 1 < 1:
            raise CovariateError(f"{n} samples leave no residual degrees of freedom for {self.n_columns} "
                                 "model columns (intercept + covariates) and the SNP; add samples")
        if dropped:
            warnings.warn(f"covariates dropped before the GWAS: {dropped}", UserWarning, stacklevel=2)

    @property
    def n_columns(self) -> int:
        """Columns of the basis: intercept + kept covariates."""
        return int(self.q.shape[1])

    def transform(self, values: np.ndarray) -> np.ndarray:
        """(n_samples, m) -> residuals after projecting out ``[1, C]``: ``x - Q (Q' x)``."""
        values = np.asarray(values, dtype=np.float64)
        return values - self.q @ (self.q.T @ values)

    def dof(self, n_obs: int | np.ndarray) -> int | np.ndarray:
        """Residual degrees of freedom of a SNP called in ``n_obs`` samples: n_obs - n_columns - 1."""
        return n_obs - self.n_columns - 1


def _covariate_values(covariates: pd.DataFrame) -> np.ndarray:
    try:
        x = covariates.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CovariateError(f"covariates must be numeric (one-hot encode categories with "
                             f"genetics.design.design_matrix): {exc}") from exc
    bad = ~np.isfinite(x)
    if bad.any():
        cols = [str(c) for c in covariates.columns[bad.any(axis=0)]]
        subjects = [str(s) for s in covariates.index[bad.any(axis=1)]]
        raise CovariateError(f"covariate column(s) {cols} hold NaN or infinite values for {len(subjects)} "
                             f"subject(s) {_quote(subjects)}; impute them or drop those subjects")
    return x


def _collinear_partners(col: np.ndarray, x: np.ndarray, covariates: pd.DataFrame, kept: list[str]) -> str:
    """'intercept + a + b': the kept columns that reproduce ``col`` (least squares, |coef| above noise)."""
    if not kept:
        return "the intercept"
    idx = [list(map(str, covariates.columns)).index(k) for k in kept]
    design = np.column_stack([np.ones(len(col)), x[:, idx]])
    coef = np.linalg.lstsq(design, col, rcond=None)[0]
    scale = np.linalg.norm(design, axis=0) * np.abs(coef)
    noise = 1e-8 * np.linalg.norm(col)
    names = ["intercept"] if scale[0] > noise else []
    names += [k for k, s in zip(kept, scale[1:], strict=True) if s > noise]
    return " + ".join(names) or "the intercept"


def _quote(ids: Sequence[str]) -> str:
    shown = ", ".join(repr(str(x)) for x in ids[:_SHOW_IDS])
    return f"[{shown}{', ...' if len(ids) > _SHOW_IDS else ''}]"


def align_samples(genotypes: GenotypeSource, phenotypes: pd.DataFrame,
                  covariates: pd.DataFrame) -> tuple[GenotypeSource, np.ndarray, pd.DataFrame]:
    """Genotype source restricted to the phenotyped samples, phenotypes (n, P) and covariates, aligned by IID.

    Raises
    ------
    CovariateError
        Repeated IIDs, phenotyped IIDs without covariates, non-numeric or NaN phenotypes.
    GenotypeError
        Phenotyped IIDs absent from the genotype file (from ``select_samples``).
    """
    pheno = phenotypes.copy()
    pheno.index = pheno.index.astype(str)
    cov = covariates.copy()
    cov.index = cov.index.astype(str)
    for name, frame in (("phenotypes", pheno), ("covariates", cov)):
        if frame.index.has_duplicates:
            repeated = frame.index[frame.index.duplicated()].tolist()
            raise CovariateError(f"{name} repeat IID(s) {_quote(repeated)}; one row per sample")
    if pheno.shape[1] == 0 or pheno.shape[0] == 0:
        raise CovariateError(f"phenotypes has shape {pheno.shape}; expected samples x dims with both > 0")
    absent = pheno.index.difference(cov.index, sort=False).tolist()
    if absent:
        raise CovariateError(f"{len(absent)} of {len(pheno)} phenotyped IIDs have no covariate row: "
                             f"{_quote(absent)}; add them to the covariates or drop them from the phenotypes")
    try:
        y = pheno.to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CovariateError(f"phenotype columns must be numeric: {exc}") from exc
    bad = ~np.isfinite(y)
    if bad.any():
        cols = [str(c) for c in pheno.columns[bad.any(axis=0)]]
        subjects = pheno.index[bad.any(axis=1)].tolist()
        raise CovariateError(f"phenotype column(s) {_quote(cols)} hold NaN or infinite values for "
                             f"{len(subjects)} subject(s) {_quote(subjects)}; drop those subjects or impute")
    return genotypes.select_samples(pheno.index.tolist()), y, cov.loc[pheno.index]


@dataclass(frozen=True)
class NullModel:
    """Everything about the samples that does not depend on the SNP.

    ``rhs`` is ``[Y_res | Q]`` (n, P + c) in the compute dtype; ``q_pad`` / ``y_pad`` are float64
    copies of Q and Y_res with an extra zero row, so padded missing-sample indices gather zeros.
    ``whitening`` is set when the joint test runs.
    """

    q: np.ndarray
    y_res: np.ndarray
    yy: np.ndarray
    rhs: np.ndarray
    rhs64: np.ndarray
    q_pad: np.ndarray
    y_pad: np.ndarray
    df_ref: int
    whitening: mv.Whitening | None = None

    @property
    def n_samples(self) -> int:
        return int(self.q.shape[0])

    @property
    def n_dims(self) -> int:
        return int(self.y_res.shape[1])


def null_model(residualizer: Residualizer, y: np.ndarray, dims: Sequence[str], dtype: str,
               joint: bool = False) -> NullModel:
    """Residualize the phenotypes once; refuse a phenotype with no variance left."""
    y_res = residualizer.transform(y)
    yy = np.einsum("ij,ij->j", y_res, y_res)
    scale = np.einsum("ij,ij->j", y - y.mean(axis=0), y - y.mean(axis=0))
    flat = np.flatnonzero(yy <= 1e-12 * np.maximum(scale, 1e-300))
    if flat.size:
        raise CovariateError(f"phenotype column(s) {_quote([dims[k] for k in flat])} are constant or fully "
                             "explained by the covariates; drop them before the GWAS")
    q = residualizer.q
    rhs64 = np.ascontiguousarray(np.hstack([y_res, q]))
    return NullModel(q=q, y_res=y_res, yy=yy, rhs=rhs64.astype(dtype, copy=False), rhs64=rhs64,
                     q_pad=np.vstack([q, np.zeros((1, q.shape[1]))]),
                     y_pad=np.vstack([y_res, np.zeros((1, y.shape[1]))]),
                     df_ref=int(residualizer.dof(y.shape[0])),
                     whitening=mv.whiten(y_res, q.shape[1]) if joint else None)
