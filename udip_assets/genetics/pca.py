"""Genetic principal components (ancestry covariates, UK Biobank field 22009 style).

Genotypes are standardised per SNP as in EIGENSTRAT (Price et al. 2006; Patterson et al. 2006):
x = (g - 2p) / sqrt(2p(1 - p)), missing calls set to the mean (0 after centring), monomorphic SNPs
dropped. PCs are the left singular vectors of the (n_samples, n_snps) standardised matrix scaled by
the singular values (sample scores), computed from streamed SNP chunks.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh

from udip_assets.errors import UdipConfigError
from udip_assets.genetics.plink import to_float_dosage

_CHUNK_VARIANTS = 4096
_EXACT_MAX_SAMPLES = 5000
_OVERSAMPLE = 10
_POWER_ITERATIONS = 4


def _standardized_chunks(dosage: np.ndarray, thin: int):
    """Yield float32 (n_samples, <= 4096) standardised chunks of every ``thin``-th SNP."""
    cols = np.arange(0, np.shape(dosage)[1], thin)
    for start in range(0, cols.size, _CHUNK_VARIANTS):
        block = to_float_dosage(dosage[:, cols[start:start + _CHUNK_VARIANTS]])
        n_typed = (~np.isnan(block)).sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            p = np.nansum(block, axis=0) / (2 * n_typed)  # (v,) A1 frequency among typed samples
        sd = np.sqrt(2 * p * (1 - p))
        ok = np.isfinite(sd) & (sd > 0)
        x = (block[:, ok] - 2 * p[ok]) / sd[ok]
        yield np.nan_to_num(x, nan=0.0).astype(np.float32)


def _exact_pcs(dosage: np.ndarray, n_pcs: int, thin: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Top eigenpairs of the (n, n) genetic relationship matrix X X' accumulated in float64."""
    n = np.shape(dosage)[0]
    gram = np.zeros((n, n))
    for x in _standardized_chunks(dosage, thin):
        gram += x @ x.T
    total = float(np.trace(gram))
    evals, evecs = eigh(gram, subset_by_index=[n - n_pcs, n - 1])
    order = np.argsort(evals)[::-1]
    evals = np.clip(evals[order], 0, None)
    return evecs[:, order] * np.sqrt(evals), evals, total


def _randomized_pcs(dosage: np.ndarray, n_pcs: int, thin: int,
                    seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Randomised SVD (Halko et al. 2011) with power iterations, streaming SNP chunks each pass."""
    n = np.shape(dosage)[0]
    rng = np.random.default_rng(seed)
    width = n_pcs + _OVERSAMPLE
    y = np.zeros((n, width))
    total = 0.0
    for x in _standardized_chunks(dosage, thin):  # Y = X Omega
        y += x @ rng.standard_normal((x.shape[1], width)).astype(np.float32)
        total += float(np.sum(x.astype(np.float64) ** 2))
    for _ in range(_POWER_ITERATIONS):  # Y = X X' Q, re-orthonormalised each pass
        q = np.linalg.qr(y)[0].astype(np.float32)
        y = np.zeros((n, width))
        for x in _standardized_chunks(dosage, thin):
            y += x @ (x.T @ q)
    q = np.linalg.qr(y)[0]
    small = np.zeros((width, width))  # B B' with B = Q' X
    for x in _standardized_chunks(dosage, thin):
        b = q.T @ x
        small += b @ b.T
    evals, evecs = np.linalg.eigh(small)
    order = np.argsort(evals)[::-1][:n_pcs]
    evals = np.clip(evals[order], 0, None)
    return (q @ evecs[:, order]) * np.sqrt(evals), evals, total


def genetic_pcs(dosage: np.ndarray, n_pcs: int = 10, seed: int = 0, thin: int = 1,
                method: str = "auto") -> tuple[np.ndarray, np.ndarray]:
    """Principal components of standardised genotypes.

    Parameters
    ----------
    dosage : np.ndarray
        (n_samples, n_variants) allele counts 0/1/2; missing as -1 (int) or NaN.
    n_pcs : int
        Number of components, 1 <= n_pcs < n_samples.
    seed : int
        Seeds the random test matrix of the randomised method (unused by the exact one).
    thin : int
        Use every ``thin``-th SNP (cheap LD thinning of a dense panel).
    method : {'auto', 'exact', 'randomized'}
        'exact' eigendecomposes the (n, n) relationship matrix; 'randomized' streams SNP chunks
        through a randomised SVD; 'auto' is exact up to 5,000 samples.

    Returns
    -------
    scores : np.ndarray
        (n_samples, n_pcs) float64 sample scores U S, PC1 first.
    explained_variance_ratio : np.ndarray
        (n_pcs,) share of the total standardised variance carried by each PC.

    Notes
    -----
    Standardisation follows EIGENSTRAT so that every SNP has unit expected variance under
    Hardy-Weinberg equilibrium and rare SNPs are not down-weighted. Signs are fixed so that the
    largest-magnitude score of each PC is positive, which makes results reproducible across
    methods and LAPACK builds.
    """
    dosage = np.asarray(dosage)
    n, m = dosage.shape
    if not isinstance(n_pcs, int | np.integer) or not 1 <= n_pcs < n:
        raise UdipConfigError(f"n_pcs must be an integer in [1, n_samples - 1 = {n - 1}], got {n_pcs!r}")
    if not isinstance(thin, int | np.integer) or thin < 1 or -(-m // thin) < n_pcs:
        raise UdipConfigError(f"thin must be an integer >= 1 leaving >= n_pcs ({n_pcs}) of the {m} SNPs, "
                              f"got {thin!r}")
    if method not in ("auto", "exact", "randomized"):
        raise UdipConfigError(f"method must be 'auto', 'exact' or 'randomized', got {method!r}")
    exact = method == "exact" or (method == "auto" and n <= _EXACT_MAX_SAMPLES)
    if exact:
        scores, evals, total = _exact_pcs(dosage, n_pcs, thin)
    else:
        scores, evals, total = _randomized_pcs(dosage, n_pcs, thin, seed)
    flip = np.sign(scores[np.argmax(np.abs(scores), axis=0), np.arange(n_pcs)])
    flip[flip == 0] = 1
    return scores * flip, evals / total if total > 0 else np.zeros(n_pcs)
