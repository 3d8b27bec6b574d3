"""What the images hold, and what any code of the UDIPs' width keeps: ceilings for the truth check.

``udip truth`` asks how well the UDIPs encode each planted phenotype. This module gives the two
numbers that say whether a miss is the model's or lies deeper:

* **the voxels** (:func:`voxel_ridge_cv_r2`): ridge regression of the phenotype on every voxel of
  the preprocessed scans, cross-validated. It is supervised (it sees the phenotype), so it bounds
  what any linear read-out of the image can give: near 1, the structure is in the image.
* **a linear code of the same width** (:func:`pca_codes`): the top ``k`` principal components of
  the voxels, the code of ``k`` numbers per scan that reconstructs the scans with the least squared
  error among all linear codes (Eckart-Young), i.e. what the ViT-AE's objective (MSE) would keep if
  the autoencoder were linear and trained to its optimum. It is unsupervised, like the UDIPs, so it
  can be scored the same way (cross-validated R2 from the code) and run through the same GWAS and
  clumping.

Both work from one centred Gram matrix of the scans (:func:`image_gram`), streamed over voxel
chunks of memory-mapped caches, so a cohort of thousands of 2 mm scans needs a few hundred MB.
Evaluation only: like :mod:`udip_assets.cohort.truth_check`, the pipeline never calls it.

Notes
-----
The PCA is fitted on the scans it scores (the GWAS subjects), which flatters it slightly: a code
fitted on other scans of the same population keeps a little less. It uses no phenotype and no
genotype, so the GWAS of its codes is as unsupervised as the GWAS of the UDIPs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from udip_assets.errors import UdipConfigError

# Ridge penalties relative to the mean eigenvalue of the training Gram matrix (trace / m): from a
# nearly unpenalised fit to one that shrinks every direction by half.
RELATIVE_ALPHAS = np.logspace(-7, 0, 15)
CHUNK_BYTES = 512 * 2**20


@dataclass(frozen=True)
class ImageGram:
    """Centred Gram matrix of n scans: ``gram[i, j] = <x_i - mean, x_j - mean>`` over all voxels.

    Attributes
    ----------
    gram : ndarray (n, n) float64
    n_voxels : int
        Voxels that are non-zero in at least one scan (the others add nothing).
    """

    gram: np.ndarray
    n_voxels: int


def image_gram(paths: Sequence[str | Path], chunk_voxels: int | None = None,
               show_progress: bool = False) -> ImageGram:
    """The centred Gram matrix of the scans in ``paths``, streamed over chunks of voxels.

    Parameters
    ----------
    paths : sequence of str or Path
        Preprocessed scan caches (``.npy``, any shape, all the same); one row / column each.
    chunk_voxels : int, optional
        Voxels read from every scan at a time (default: what fits ``CHUNK_BYTES`` in float32).
    show_progress : bool
        tqdm bar over the chunks.

    Returns
    -------
    ImageGram

    Raises
    ------
    UdipConfigError
        Fewer than 3 scans, or a scan whose shape differs from the first (naming both).

    Notes
    -----
    Each chunk is centred on its own column means (exact: the mean of a voxel needs only that
    voxel's column), multiplied in float32 and accumulated in float64. Every file is read once in
    all, a contiguous slice per chunk, through a memory map.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 3:
        raise UdipConfigError(f"image_gram needs at least 3 scans, got {len(paths)}")
    maps = [np.load(p, mmap_mode="r") for p in paths]
    shape = maps[0].shape
    for path, m in zip(paths, maps, strict=True):
        if m.shape != shape:
            raise UdipConfigError(f"scan {path} has shape {m.shape}, expected {shape} (the shape of {paths[0]}); "
                                  "all scans of one ceiling must be preprocessed on the same grid")
    flat = [m.reshape(-1) for m in maps]
    size, n = flat[0].size, len(flat)
    step = chunk_voxels or max(1, CHUNK_BYTES // (4 * n))
    gram = np.zeros((n, n))
    n_voxels = 0
    starts = range(0, size, step)
    for start in tqdm(starts, desc="image Gram matrix", unit="chunk", disable=not show_progress):
        block = np.empty((n, min(step, size - start)), np.float32)  # (n, c)
        for i, f in enumerate(flat):
            block[i] = f[start:start + step]
        used = np.flatnonzero((block != 0).any(axis=0))
        n_voxels += used.size
        block = block[:, used]
        block -= block.mean(axis=0, dtype=np.float64).astype(np.float32)
        gram += block @ block.T
    return ImageGram(gram, n_voxels)


def pca_codes(gram: np.ndarray, n_components: int) -> np.ndarray:
    """Scores of the scans on their top ``n_components`` principal components, from the Gram matrix.

    Parameters
    ----------
    gram : ndarray (n, n)
        Centred Gram matrix (:func:`image_gram`).
    n_components : int
        1 <= k < n.

    Returns
    -------
    ndarray (n, k) float64
        Column j = u_j sqrt(lambda_j) for the j-th largest eigenpair of ``gram``: the projection of
        each centred scan on the j-th principal axis. Signs are fixed so that each column's
        largest-magnitude entry is positive.
    """
    n = gram.shape[0]
    if isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components < n:
        raise UdipConfigError(f"n_components must be an integer in [1, {n - 1}] for {n} scans, got {n_components!r}")
    values, vectors = np.linalg.eigh(gram)
    top = np.argsort(values)[::-1][:n_components]
    scores = vectors[:, top] * np.sqrt(np.clip(values[top], 0.0, None))  # (n, k)
    flip = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(n_components)])
    return scores * np.where(flip == 0, 1.0, flip)


def _centred_blocks(gram: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train x train and test x train blocks of the Gram matrix of scans centred on the training mean."""
    k_tt = gram[np.ix_(train, train)]  # (m, m)
    k_st = gram[np.ix_(test, train)]  # (s, m)
    col = k_tt.mean(axis=0)  # <x_j, mean_train> for training j
    total = col.mean()
    k_tt = k_tt - col[None, :] - col[:, None] + total
    k_st = k_st - k_st.mean(axis=1, keepdims=True) - col[None, :] + total
    return k_tt, k_st


def _ridge_fold(gram: np.ndarray, ys: np.ndarray, train: np.ndarray, test: np.ndarray,
                relative_alphas: np.ndarray) -> np.ndarray:
    """Test-row predictions (s, t) for each column of ``ys`` (n, t) of ridge with an unpenalised
    intercept on the training rows, each column's penalty chosen by exact leave-one-out on them (as
    scikit-learn's ``RidgeCV``); one eigendecomposition of the training Gram matrix serves them all."""
    k_tt, k_st = _centred_blocks(gram, train, test)
    m = len(train)
    values, vectors = np.linalg.eigh(k_tt)
    values = np.clip(values, 0.0, None)
    y_mean = ys[train].mean(axis=0)  # (t,)
    yc = ys[train] - y_mean  # (m, t)
    proj = vectors.T @ yc  # (m, t)
    best_loo = np.full(ys.shape[1], np.inf)
    best_alpha = np.zeros(ys.shape[1])
    for alpha in relative_alphas * max(values.sum() / m, np.finfo(float).tiny):
        shrink = values / (values + alpha)  # (m,)
        fitted = vectors @ (shrink[:, None] * proj)  # (m, t) centred fitted values
        hat_diag = (vectors**2) @ shrink + 1.0 / m  # (m,) the hat matrix's diagonal, intercept included
        loo = np.sum(((yc - fitted) / (1.0 - hat_diag)[:, None]) ** 2, axis=0)  # (t,)
        better = loo < best_loo
        best_loo[better], best_alpha[better] = loo[better], alpha
    dual = vectors @ (proj / (values[:, None] + best_alpha[None, :]))  # (m, t): ridge in its dual form
    return k_st @ dual + y_mean


def voxel_ridge_cv_r2s(gram: np.ndarray, ys: np.ndarray, n_folds: int = 5, seed: int = 0,
                       relative_alphas: np.ndarray = RELATIVE_ALPHAS) -> np.ndarray:
    """Cross-validated R2 of ridge regression of each column of ``ys`` on the voxels whose Gram matrix
    is ``gram``.

    Parameters
    ----------
    gram : ndarray (n, n)
        Gram matrix of the scans (centred or not: the fit re-centres on each training fold).
    ys : ndarray (n, t)
        The phenotypes, finite.
    n_folds, seed : int
        ``KFold(n_folds, shuffle=True, random_state=seed)`` over the rows.
    relative_alphas : ndarray
        Penalties tried in each training fold, as multiples of the mean eigenvalue of its centred Gram
        matrix; the one with the least leave-one-out error, per phenotype, is used for the held-out fold.

    Returns
    -------
    ndarray (t,)
        ``1 - SSE / SST`` of each column's out-of-fold predictions (SST about its mean over all rows).

    Notes
    -----
    With p voxels >> n scans the dual form is exact and cheap: the ridge fit on training rows T
    predicts a held-out row s as ``y_T mean + k_sT (K_TT + alpha I)^-1 (y_T - mean)`` with every
    scan centred on the training mean. The penalty is chosen inside each training fold by exact
    leave-one-out, as scikit-learn's ``RidgeCV`` does, so the held-out folds play no part in it.
    Each fold's Gram matrix is decomposed once for all the phenotypes.
    """
    from sklearn.model_selection import KFold  # evaluation-only dependency, as in truth_check

    ys = np.asarray(ys, dtype=np.float64)
    n = gram.shape[0]
    if gram.shape != (n, n) or ys.ndim != 2 or ys.shape[0] != n:
        raise UdipConfigError(f"gram must be square and ys one row per scan: gram {gram.shape}, ys {ys.shape}")
    if not np.isfinite(ys).all() or (np.ptp(ys, axis=0) == 0).any():
        raise UdipConfigError("y must be finite and not constant")
    pred = np.empty_like(ys)
    for train, test in KFold(n_folds, shuffle=True, random_state=seed).split(np.arange(n)):
        pred[test] = _ridge_fold(gram, ys, train, test, np.asarray(relative_alphas, dtype=np.float64))
    return 1.0 - np.sum((ys - pred) ** 2, axis=0) / np.sum((ys - ys.mean(axis=0)) ** 2, axis=0)


def voxel_ridge_cv_r2(gram: np.ndarray, y: np.ndarray, n_folds: int = 5, seed: int = 0,
                      relative_alphas: np.ndarray = RELATIVE_ALPHAS) -> float:
    """:func:`voxel_ridge_cv_r2s` of one phenotype ``y`` (n,)."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 1:
        raise UdipConfigError(f"y must be one value per scan, got shape {y.shape}")
    return float(voxel_ridge_cv_r2s(gram, y[:, None], n_folds, seed, relative_alphas)[0])


def ceiling_table(gram: ImageGram, subject_ids: Sequence[str], targets: pd.DataFrame, n_components: int,
                  n_folds: int = 5, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per target: CV R2 from all voxels and from the linear ``n_components``-number code.

    Parameters
    ----------
    gram : ImageGram
        Of the scans of ``subject_ids``, in that order.
    subject_ids : sequence of str
    targets : DataFrame
        Index = subject id, one column per phenotype (``image_region_phenotypes``); every subject of
        ``subject_ids`` must have a row.
    n_components : int
        Width of the linear code (the UDIPs' number of dims, for a like-for-like comparison).

    Returns
    -------
    table : DataFrame
        ``target, voxels_cv_r2, pca_cv_r2``.
    codes : DataFrame (n, n_components)
        The PCA codes, indexed by subject id (sorted), columns ``udip_000..``: phenotypes for a GWAS.

    Notes
    -----
    Subjects are sorted by id before folding (as :func:`~udip_assets.cohort.truth_check.encoding_diagnostics`
    does), so the folds of the voxels, of the code and of the UDIPs are the same. A subject whose
    target is missing is left out of that target's voxel regression.
    """
    from udip_assets.cohort.truth_check import encoding_diagnostics
    from udip_assets.model.extract import udip_columns

    ids = pd.Index([str(s) for s in subject_ids], name="subject_id")
    missing = ids.difference(targets.index.astype(str))
    if len(missing):
        raise UdipConfigError(f"targets lack {len(missing)} of the scans' subjects (e.g. {list(missing[:3])}); "
                              "index both by the same subject ids")
    order = np.argsort(ids.to_numpy(), kind="stable")  # folds by sorted id, as encoding_diagnostics
    ids, k = ids[order], gram.gram[np.ix_(order, order)]
    y = targets.set_axis(targets.index.astype(str)).loc[ids]
    codes = pd.DataFrame(pca_codes(k, n_components), index=ids, columns=udip_columns(n_components))
    pca = encoding_diagnostics(codes, y, n_folds=n_folds, seed=seed).set_index("target")["cv_r2"]
    values = y.to_numpy(dtype=np.float64)  # (n, t)
    complete = np.isfinite(values).all(axis=0)
    voxels = pd.Series(np.nan, index=y.columns)
    if complete.any():  # the targets every subject has: one regression for all
        voxels[complete] = voxel_ridge_cv_r2s(k, values[:, complete], n_folds, seed)
    for j in np.flatnonzero(~complete):  # a target with gaps: on its own subjects
        keep = np.isfinite(values[:, j])
        voxels.iloc[j] = voxel_ridge_cv_r2(k[np.ix_(keep, keep)], values[keep, j], n_folds, seed)
    rows = [{"target": str(col), "voxels_cv_r2": float(voxels[col]), "pca_cv_r2": float(pca[str(col)])}
            for col in y.columns]
    return pd.DataFrame(rows, columns=["target", "voxels_cv_r2", "pca_cv_r2"]), codes
