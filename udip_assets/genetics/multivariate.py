"""Joint association test of all phenotype dims with each SNP, beside the per-dim scan.

The per-dim scan (:mod:`udip_assets.genetics.gwas`) fits ``y_k = a + C b + beta_k g + e`` for
each of the P dims. The joint test asks whether the SNP is associated with the dims at all: the
multivariate regression of Y (n, P) on ``[1, C, g]`` and the test of g's row of coefficients
(with one hypothesis degree of freedom Wilks' lambda, Hotelling-Lawley, Pillai and Roy are the
same exact F test). That test equals the F test of the reverse regression of g on ``[1, C, Y]``
against g on ``[1, C]``::

    R2 = gy' (Y_res'Y_res)^-1 gy / gg,   F = (R2 / df1) / ((1 - R2) / df2),
    df1 = r (the numerical rank of Y_res),   df2 = n_obs - c - r,

with gy = <g_res, y_res> (P,) and gg = <g_res, g_res> the scan's sufficient statistics and c the
columns of the covariate basis Q (intercept + covariates kept). Computed inside the scan's
streamed pass at the cost of one (v, P) x (P, r) product per chunk:

1. :func:`whiten`, once per scan: W (P, r) with W' (Y_res'Y_res) W = I_r, so R2 = |gy W|^2 / gg;
2. a SNP with missing calls (missing='drop') is refitted on its called samples exactly:
   :func:`joint_r2_missing` downdates the whitened phenotype Gram matrix by the missing samples
   and solves the r x r system by batched Cholesky (its k x k Woodbury form when the missing
   samples plus covariate columns, k, are fewer than r);
3. :func:`joint_table` turns R2 into F, df1, df2 and p (float64), one row per SNP.

Also :func:`inverse_normal_transform`, the rank-based transform the scan may apply to the
phenotypes first (``GwasConfig.inverse_normal``). Plain numpy, scipy and torch: no Dagster.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.special as sps

MULTIVARIATE_COLUMNS = ("snp", "chrom", "pos_bp", "a1", "a2", "n", "f", "df1", "df2", "p")
_TABLE_DTYPES = {"snp": object, "chrom": object, "pos_bp": np.int64, "a1": object, "a2": object,
                 "n": np.int64, "f": np.float64, "df1": np.int64, "df2": np.int64, "p": np.float64}
RANK_TOL = 1e-10  # eigenvalues <= RANK_TOL x the largest are dropped (df1 = the directions kept)
# Relative slack on F when screening float32 statistics for a float64 refit: F ~ t^2, so twice the
# per-dim scan's 1e-4 on |t|, and a further factor 5 as gy is projected on r directions at once.
_FLOAT32_F_SLACK = 1e-3
_BLOM_OFFSET = 3.0 / 8.0


@dataclass(frozen=True)
class Whitening:
    """The residualized phenotypes' whitening, computed once per scan by :func:`whiten`.

    Attributes
    ----------
    w : np.ndarray
        (P, r) float64 with ``W' (Y_res'Y_res) W = I_r``.
    z_pad : np.ndarray
        (n_samples + 1, r) float64 whitened phenotypes ``Y_res W`` (orthonormal columns) with a zero
        row appended, so padded missing-sample indices gather zeros.
    n_columns : int
        Columns of the covariate basis Q (intercept + covariates kept).
    """

    w: np.ndarray
    z_pad: np.ndarray
    n_columns: int

    @property
    def rank(self) -> int:
        """r: phenotype directions tested jointly (df1)."""
        return int(self.w.shape[1])


def whiten(y_res: np.ndarray, n_columns: int, tol: float = RANK_TOL) -> Whitening:
    """Whitening W (P, r) of the residualized phenotypes, dropping (near) null directions.

    Parameters
    ----------
    y_res : np.ndarray
        (n_samples, P) float64 phenotypes with the covariates projected out; no column all zero.
    n_columns : int
        Columns of the covariate basis Q: c in ``df2 = n_obs - c - r``.
    tol : float
        A direction whose eigenvalue is at most ``tol`` times the largest is dropped.

    Returns
    -------
    Whitening

    Notes
    -----
    The eigen-decomposition ``V diag(lambda) V'`` is of the correlation form
    ``D^-1/2 (Y_res'Y_res) D^-1/2`` (D its diagonal), so the rank cut does not depend on the
    columns' units; ``W = D^-1/2 V_r diag(lambda_r)^-1/2`` over the r eigenvalues above ``tol``
    times the largest. Dims that are (nearly) linear combinations of others, as learned
    embeddings often collapse to, then count once: df1 = r < P and the test is that of the
    full-rank subspace (the directions dropped hold at most 1e-5 of the largest one's norm).
    """
    yy = y_res.T @ y_res  # (P, P)
    d = 1.0 / np.sqrt(np.diag(yy))
    lam, vec = np.linalg.eigh(yy * d[:, None] * d[None, :])
    keep = np.flatnonzero(lam > tol * lam[-1])[::-1]  # largest first
    w = d[:, None] * vec[:, keep] / np.sqrt(lam[keep])[None, :]  # (P, r)
    z = y_res @ w  # (n, r)
    return Whitening(w=w, z_pad=np.vstack([z, np.zeros((1, z.shape[1]))]), n_columns=int(n_columns))


def joint_r2(gy: np.ndarray, gg: np.ndarray, whitening: Whitening) -> np.ndarray:
    """Partial R2 of each SNP on the phenotypes given the covariates, all samples.

    Parameters
    ----------
    gy : np.ndarray
        (v, P) float64 ``<g_res, y_res>``.
    gg : np.ndarray
        (v,) float64 ``<g_res, g_res>``.
    whitening : Whitening

    Returns
    -------
    np.ndarray
        (v,) ``|gy W|^2 / gg`` = ``gy' (Y_res'Y_res)^-1 gy / gg`` on the kept directions.
    """
    x = gy @ whitening.w  # (v, r)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.einsum("ij,ij->i", x, x) / gg


def joint_r2_missing(idx: np.ndarray, zb, gy_k: np.ndarray, gg_k: np.ndarray, whitening: Whitening,
                     tol: float = RANK_TOL) -> np.ndarray:
    """Partial R2 of SNPs refitted on their called samples K, from the missing-call downdate.

    Parameters
    ----------
    idx : np.ndarray
        (b, m) missing sample indices per SNP, padded with n_samples (the zero row of ``z_pad``).
    zb : torch.Tensor
        (b, c, P) float64 ``L^-1 B`` of ``ols_kernel._downdate_missing``: B = Q_M' y_M and L the
        Cholesky factor of ``Q_K'Q_K = I - Q_M'Q_M``.
    gy_k, gg_k : np.ndarray
        (b, P) and (b,) float64 ``<g_res, y_res>`` and ``<g_res, g_res>`` on K (that downdate).
    whitening : Whitening
    tol : float
        A SNP whose whitened Gram matrix on K has a Cholesky pivot <= ``tol`` gets NaN.

    Returns
    -------
    np.ndarray
        (b,) R2 on K; NaN where K loses a phenotype direction.

    Notes
    -----
    On K the residualized phenotype Gram matrix is ``Y'Y - y_M'y_M - (L^-1 B)'(L^-1 B)``.
    Projected onto the full-sample whitened directions W it is the r x r matrix
    ``A = I - D'D`` with ``D = [Z_M; L^-1 B W]`` ((m + c) x r, Z = Y_res W), and with
    x = gy_K W, ``R2 = x' A^-1 x / gg_K``: exactly OLS of g on ``[1, C, Y]`` over K. The
    directions dropped by :func:`whiten` are null (to ``tol``) on every sample, hence on K, so
    the r x r system loses nothing. See :func:`_inverse_quadratic_form` for the solve.
    """
    import torch  # already imported and single-threaded by the scan (ols_kernel._torch) when called from it

    w = torch.from_numpy(whitening.w)
    down = torch.cat([torch.from_numpy(whitening.z_pad[idx]), zb @ w], dim=1)  # (b, m + c, r)
    quad, lost = _inverse_quadratic_form(down, torch.from_numpy(gy_k) @ w, tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = quad / gg_k
    r2[lost] = np.nan
    return r2


def _inverse_quadratic_form(down, x, tol: float) -> tuple[np.ndarray, np.ndarray]:
    """``x' (I - D'D)^-1 x`` per SNP by batched Cholesky, and where ``I - D'D`` is (near) singular.

    Parameters
    ----------
    down : torch.Tensor
        (b, k, r) float64 D, k = padded missing samples + c.
    x : torch.Tensor
        (b, r) float64.
    tol : float
        A Cholesky pivot (squared diagonal of the factor) <= ``tol`` marks the SNP as lost.

    Returns
    -------
    quad, lost : np.ndarray
        (b,) float64 quadratic forms (meaningless where lost) and (b,) bool.

    Notes
    -----
    With k >= r the r x r matrix ``I - D'D`` is factored (cost ~ k r^2 + r^3 / 3 per SNP);
    with fewer missing samples, k < r, Woodbury's identity
    ``(I_r - D'D)^-1 = I_r + D' (I_k - D D')^-1 D`` gives ``|x|^2 + (Dx)' (I_k - DD')^-1 (Dx)``,
    the k x k system (~ k^2 r + k^3 / 3). Both matrices share the eigenvalues below 1, so either
    factor flags the same loss of rank.
    """
    import torch

    b, k, r = down.shape
    small = k < r
    dim = k if small else r
    eye = torch.eye(dim, dtype=down.dtype)
    left, right = (down, down.transpose(1, 2)) if small else (down.transpose(1, 2), down)
    gram = torch.baddbmm(eye.expand(b, -1, -1), left, right, alpha=-1.0)  # (b, dim, dim)
    chol, info = torch.linalg.cholesky_ex(gram)
    pivot = torch.diagonal(chol, dim1=1, dim2=2).min(dim=1).values
    lost = (info != 0) | ~(pivot * pivot > tol)
    chol[lost] = eye
    rhs = (down @ x[:, :, None]) if small else x[:, :, None]  # (b, dim, 1)
    sol = torch.linalg.solve_triangular(chol, rhs, upper=False)[:, :, 0]
    quad = (sol * sol).sum(dim=1) + ((x * x).sum(dim=1) if small else 0.0)
    return quad.numpy(), lost.numpy()


def _f_statistic(r2: np.ndarray, df: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """(v,) F and df2 from R2 and the per-dim residual df (n_obs - c - 1); F is NaN where df2 < 1."""
    df2 = np.asarray(df, dtype=np.float64) + 1.0 - rank
    r2 = np.clip(r2, 0.0, 1.0)  # NaN stays NaN
    with np.errstate(divide="ignore", invalid="ignore"):
        f = np.where(df2 >= 1, (r2 / rank) / ((1.0 - r2) / df2), np.nan)
    return f, df2


def rows_to_refit(r2: np.ndarray, df: np.ndarray, whitening: Whitening, keep_p: float) -> np.ndarray:
    """Rows whose joint p computed in float32 may be below ``keep_p``: refitted in float64.

    Parameters
    ----------
    r2, df : np.ndarray
        (v,) R2 from float32 sums and per-dim residual df (n_obs - c - 1).
    whitening : Whitening
    keep_p : float

    Returns
    -------
    np.ndarray
        (h,) int64 row indices, sorted.

    Notes
    -----
    The p of F inflated by a relative 1e-3 is compared with ``keep_p``, so no SNP whose exact p is
    below ``keep_p`` is missed while float32 error on F stays below that slack.
    """
    f, df2 = _f_statistic(r2, df, whitening.rank)
    ok = np.isfinite(f)
    p = np.ones(f.shape)
    p[ok] = sps.fdtrc(whitening.rank, df2[ok], f[ok] * (1.0 + _FLOAT32_F_SLACK))
    return np.flatnonzero(p < keep_p)


def joint_table(variants: dict, r2: np.ndarray, df: np.ndarray, whitening: Whitening) -> pd.DataFrame:
    """One row per SNP of a chunk: ``MULTIVARIATE_COLUMNS``.

    Parameters
    ----------
    variants : dict
        snp, chrom, pos_bp, a1, a2 arrays, (v,) each.
    r2 : np.ndarray
        (v,) partial R2 (:func:`joint_r2`, :func:`joint_r2_missing`).
    df : np.ndarray
        (v,) per-dim residual df, n_obs - c - 1 (n_obs = all samples with mean imputation).
    whitening : Whitening

    Returns
    -------
    pd.DataFrame
        n = n_obs, f, df1 = r, df2 = n_obs - c - r, p; f and p are NaN where df2 < 1 or the
        called samples lose a phenotype direction.

    Notes
    -----
    ``p = fdtrc(df1, df2, F)``, the F survival function (regularized incomplete beta), float64;
    it underflows to 0 below ~1e-308.
    """
    f, df2 = _f_statistic(r2, df, whitening.rank)
    ok = np.isfinite(f)
    p = np.full(f.shape, np.nan)
    p[ok] = sps.fdtrc(whitening.rank, df2[ok], f[ok])
    n = np.asarray(df, dtype=np.float64) + whitening.n_columns + 1.0
    table = pd.DataFrame({**variants, "n": n.astype(np.int64), "f": f,
                          "df1": np.full(f.shape, whitening.rank, dtype=np.int64),
                          "df2": df2.astype(np.int64), "p": p})
    return table.loc[:, list(MULTIVARIATE_COLUMNS)]


def empty_table() -> pd.DataFrame:
    """A table with ``MULTIVARIATE_COLUMNS`` and no rows (joint test off, or no SNP tested)."""
    return pd.DataFrame({c: pd.Series(dtype=t) for c, t in _TABLE_DTYPES.items()})


def joint_counts(table: pd.DataFrame, keep_p: float) -> dict:
    """SNPs jointly tested, with joint p < ``keep_p``, and untestable (df2 < 1; K losing a direction)."""
    no_df = table["df2"] < 1
    return {"n_multivariate": int(len(table)), "n_multivariate_hits": int((table["p"] < keep_p).sum()),
            "n_multivariate_no_df": int(no_df.sum()),
            "n_multivariate_singular": int((table["p"].isna() & ~no_df).sum())}


def inverse_normal_transform(y: np.ndarray) -> np.ndarray:
    """Rank-based inverse-normal transform of each column (Blom), ties given their average rank.

    Parameters
    ----------
    y : np.ndarray
        (n_samples, P) finite phenotypes.

    Returns
    -------
    np.ndarray
        (n_samples, P) float64 ``ndtri((rank - 3/8) / (n + 1/4))`` per column.

    Notes
    -----
    Blom's offsets make the transformed values close to the expected normal order statistics;
    the transform removes skew and outliers from the phenotypes (robust type I error for both the
    per-dim and the joint test) at the price of effect sizes no longer in the input's units.
    """
    from scipy.stats import rankdata

    ranks = rankdata(np.asarray(y, dtype=np.float64), axis=0)  # method='average'
    return sps.ndtri((ranks - _BLOM_OFFSET) / (y.shape[0] + 1.0 - 2.0 * _BLOM_OFFSET))
