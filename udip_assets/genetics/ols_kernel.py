"""The OLS kernel of the scan: centred genotypes, one matrix product per chunk, t / beta / se.

For the SNPs of one decoded chunk, :func:`prepare_block` filters and centres the dosages;
:func:`chunk_sums` gets ``<g_res, y_res>`` and ``<g_res, g_res>`` from one product ``G [Y_res | Q]``
and corrects SNPs with missing calls by an exact low-rank downdate (:func:`_downdate_missing`);
:func:`statistics` gives t in closed form (Frisch-Waugh-Lovell), and :func:`refine` recomputes
chosen SNPs in float64. Shapes: v SNPs, n samples, P phenotype columns, c basis columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from udip_assets.genetics import multivariate as mv
from udip_assets.genetics.genotype_stream import GenotypeChunk
from udip_assets.genetics.pvalues import PValueTables, t_to_neg_log10_p, t_to_p
from udip_assets.genetics.residualize import NullModel

if TYPE_CHECKING:
    from udip_assets.genetics.gwas import GwasConfig

_DOWNDATE_BATCH = 256  # SNPs with missing calls corrected together


def _torch():
    """torch (batched Cholesky for SNPs with missing calls), imported on first use: importing it costs
    ~1.5 s, which a scan of complete genotypes never pays. Its intra-op threads are set to 1, as
    the scan's own workers are the parallelism; ``gwas._single_threaded_blas`` restores them."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
    return torch


@dataclass(frozen=True)
class Block:
    """Centred genotypes of the SNPs of a chunk that pass the filters.

    g : (v, n) compute dtype, dosage minus the SNP's mean over called samples, 0 where missing;
    or, when ``offset`` is set (a chunk without missing calls), the raw dosage, whose centring
    ``g - offset`` is applied to the matrix product instead (one pass over the chunk fewer).
    gg0 : (v,) float64 sum of squares of the centred g. n_obs : (v,) called samples. maf : (v,).
    miss_rows : (v_m,) rows of g with missing calls (drop mode only); miss_idx : (v_m, m_max)
    their missing sample indices, padded with n_samples (the zero row of the padded matrices).
    rows : (v,) rows of the chunk; raw : the chunk's (n_chunk, n) float32 dosage (NaN missing).
    """

    variants: pd.DataFrame
    g: np.ndarray
    gg0: np.ndarray
    n_obs: np.ndarray
    maf: np.ndarray
    miss_rows: np.ndarray
    miss_idx: np.ndarray
    rows: np.ndarray
    raw: np.ndarray
    skipped: dict
    offset: np.ndarray | None = None


def _center_implicitly(raw: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A chunk without missing calls, left uncentred: (g = raw in ``dtype``, gg0, mean), else None.

    Dosages are small integers, so the row sums and sums of squares are exact (float32 sums of
    integers below 2^24, then float64), and so is ``gg0 = sum g^2 - n mean^2``. The product with
    the right-hand side is corrected by ``mean x colsum`` in :func:`chunk_sums`.
    """
    total = raw.sum(axis=1)
    if np.isnan(total).any():  # any NaN in a row makes its sum NaN
        return None
    n = raw.shape[1]
    total = total.astype(np.float64)
    sq = np.einsum("ij,ij->i", raw, raw).astype(np.float64)
    mean = total / n
    gg0 = sq - total * mean
    g = raw if raw.dtype == np.dtype(dtype) else raw.astype(dtype)
    return g, gg0, mean


def _center(raw: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Centre dosages on each SNP's called samples.

    Parameters
    ----------
    raw : (v, n) float32 dosage, NaN = missing (left unchanged).
    dtype : compute dtype of the returned values.

    Returns
    -------
    g : (v, n) dosage minus the SNP's mean over called samples, 0 where missing.
    gg0 : (v,) float64 sum of squares of g. mean : (v,) float64 mean dosage over called samples.
    miss : (v, n) bool missing mask, or None when no call is missing.
    """
    miss = np.isnan(raw)
    n_miss = miss.sum(axis=1)
    has_miss = bool(n_miss.any())
    filled = np.where(miss, np.zeros((), raw.dtype), raw) if has_miss else raw
    mean = filled.sum(axis=1).astype(np.float64) / np.maximum(raw.shape[1] - n_miss, 1)
    g = np.subtract(filled, mean.astype(dtype)[:, None], dtype=dtype)
    if has_miss:
        np.copyto(g, 0, where=miss)
    gg0 = np.square(g).sum(axis=1).astype(np.float64)  # pairwise summation: relative error ~1e-7 in float32
    return g, gg0, mean, (miss if has_miss else None)


def _missing_index(miss: np.ndarray, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows with any missing call and their missing sample indices, padded with ``n_samples``."""
    rows = np.flatnonzero(miss.any(axis=1))
    if rows.size == 0:
        return rows, np.empty((0, 0), dtype=np.int64)
    r, c = np.nonzero(miss[rows])
    counts = np.bincount(r, minlength=rows.size)
    idx = np.full((rows.size, int(counts.max())), n_samples, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    idx[r, np.arange(r.size) - starts[r]] = c
    return rows, idx


def prepare_block(chunk: GenotypeChunk, cfg: GwasConfig, n_columns: int) -> Block:
    """Centre a chunk's SNPs and drop those failing the filters; runs on the prefetch thread.

    Notes
    -----
    MAF and call rate are computed over the analysed samples (called ones for MAF). A SNP with
    no variance over its called samples is 'monomorphic'; one whose called samples leave no
    residual degree of freedom is 'no_df'. Neither is tested.
    """
    raw = np.ascontiguousarray(chunk.dosage.T)  # (v, n)
    n = raw.shape[1]
    implicit = _center_implicitly(raw, cfg.dtype)
    if implicit is not None:
        g, gg0, mean = implicit
        miss = None
    else:
        g, gg0, mean, miss = _center(raw, cfg.dtype)
    n_obs = n - miss.sum(axis=1) if miss is not None else np.full(len(raw), n)
    maf = np.minimum(mean / 2.0, 1.0 - mean / 2.0)
    low_call = n_obs < cfg.call_rate_min * n
    low_maf = ~low_call & (maf < cfg.maf_min)
    n_fit = n_obs if cfg.missing == "drop" else np.full(len(raw), n)
    no_df = ~low_call & ~low_maf & (n_fit - n_columns - 1 < 1)
    flat = ~low_call & ~low_maf & ~no_df & ~(gg0 > 0)
    rows = np.flatnonzero(~(low_call | low_maf | no_df | flat))
    if rows.size < len(raw):
        g, gg0 = g[rows], gg0[rows]
        miss = miss[rows] if miss is not None else None
    if cfg.missing == "drop" and miss is not None:
        miss_rows, miss_idx = _missing_index(miss, n)
    else:
        miss_rows, miss_idx = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.int64)
    skipped = {"call_rate": int(low_call.sum()), "maf": int(low_maf.sum()), "no_df": int(no_df.sum()),
               "monomorphic": int(flat.sum())}
    return Block(variants=chunk.variants.iloc[rows].reset_index(drop=True), g=g, gg0=gg0,
                 n_obs=n_obs[rows], maf=maf[rows], miss_rows=miss_rows, miss_idx=miss_idx, rows=rows,
                 raw=raw, skipped=skipped, offset=mean[rows] if implicit is not None else None)


@dataclass
class Sums:
    """Per-SNP sufficient statistics on the called samples, float64.

    gy : (v, P) <g_res, y_res>; gg : (v,) <g_res, g_res>; yy : (v, P) or (P,) residual sum of
    squares of y; df : (v,) residual degrees of freedom; ok : (v,) testable (covariates full rank);
    r2 : (v,) the joint test's R2 (None when it is off).
    """

    gy: np.ndarray
    gg: np.ndarray
    yy: np.ndarray
    df: np.ndarray
    ok: np.ndarray
    r2: np.ndarray | None = None


class DeviceProduct:
    """``g @ rhs`` on a torch device (a GPU): ``rhs`` copied there once, each chunk's ``g`` through
    pinned memory, the (v, P + c) product back as float64; the statistics stay on the CPU."""

    def __init__(self, rhs: np.ndarray, device: str) -> None:
        torch = _torch()
        self.device = torch.device(device)
        self._pin = self.device.type == "cuda"
        self._rhs = torch.from_numpy(np.ascontiguousarray(rhs)).to(self.device)

    def __call__(self, g: np.ndarray) -> np.ndarray:
        torch = _torch()
        host = torch.from_numpy(np.ascontiguousarray(g))
        if self._pin:
            host = host.pin_memory()
        return (host.to(self.device, non_blocking=self._pin) @ self._rhs).double().cpu().numpy()


def chunk_sums(block: Block, model: NullModel, cfg: GwasConfig, rhs: np.ndarray,
               product: DeviceProduct | None = None) -> Sums:
    """One matrix product for the chunk (on ``product``'s device when given), then the exact per-SNP
    downdate for missing calls."""
    n_dims = model.n_dims
    prod = product(block.g) if product is not None else (block.g @ rhs).astype(np.float64)  # (v, P + c)
    if block.offset is not None:  # uncentred g: (g - mean)' rhs = g' rhs - mean 1' rhs
        prod -= block.offset[:, None] * rhs.sum(axis=0, dtype=np.float64)[None, :]
    gy = prod[:, :n_dims]
    u = prod[:, n_dims:]  # (v, c) = Q'g
    gg = block.gg0 - np.einsum("ij,ij->i", u, u)
    ok = np.ones(len(gg), dtype=bool)
    if cfg.missing == "drop":
        df = (block.n_obs - model.q.shape[1] - 1).astype(np.float64)
    else:
        df = np.full(len(gg), float(model.df_ref))
    r2 = mv.joint_r2(gy, gg, model.whitening) if model.whitening is not None else None
    if block.miss_rows.size == 0:
        return Sums(gy=gy, gg=gg, yy=model.yy, df=df, ok=ok, r2=r2)
    yy = np.repeat(model.yy[None, :], len(gg), axis=0)
    for s in range(0, block.miss_rows.size, _DOWNDATE_BATCH):
        rows = block.miss_rows[s:s + _DOWNDATE_BATCH]
        gg_r, gy_r, yy_r, ok_r, r2_r = _downdate_missing(block.miss_idx[s:s + _DOWNDATE_BATCH], u[rows],
                                                         gy[rows], block.gg0[rows], model)
        gg[rows], gy[rows], yy[rows], ok[rows] = gg_r, gy_r, yy_r, ok_r
        if r2 is not None:
            r2[rows] = r2_r
    return Sums(gy=gy, gg=gg, yy=yy, df=df, ok=ok, r2=r2)


def _downdate_missing(idx: np.ndarray, u: np.ndarray, gy: np.ndarray, gg0: np.ndarray,
                      model: NullModel) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Sufficient statistics of SNPs refitted on their called samples, from the full-sample sums.

    Parameters
    ----------
    idx : (b, m) missing sample indices per SNP, padded with n (a zero row).
    u : (b, c) Q'g; gy : (b, P) <g, y_res>; gg0 : (b,) <g, g>, with g = 0 at missing samples.

    Returns
    -------
    gg, gy, yy, ok : (b,), (b, P), (b, P), (b,) sums over the called samples K.
    r2 : (b,) the joint test's R2 on K (``multivariate.joint_r2_missing``), None when it is off.

    Notes
    -----
    With W = Q_M (the basis rows of the missing samples), the basis restricted to K has Gram matrix
    S = Q_K'Q_K = I - W'W (a rank-m downdate), Q_K'g_K = u (g is 0 on M) and Q_K'y_K = -W'y_M
    (Q'Y_res = 0). Projecting span(Q_K) out on K gives, with L = chol(S) and B = W'y_M:
    ``gg_K = g'g - |L^-1 u|^2``, ``gy_K = g'y + (L^-1 u)'(L^-1 B)``,
    ``yy_K = y'y - |y_M|^2 - |L^-1 B|^2`` (column-wise). Since the intercept is in Q, centring g
    on K does not change these, so they equal OLS on the called samples exactly. A SNP whose
    missing samples leave the covariates rank-deficient (Cholesky fails) is flagged not ``ok``.
    """
    torch = _torch()
    w = torch.from_numpy(model.q_pad[idx])  # (b, m, c)
    y_m = torch.from_numpy(model.y_pad[idx])  # (b, m, P)
    eye = torch.eye(w.shape[2], dtype=w.dtype)
    chol, info = torch.linalg.cholesky_ex(eye - w.transpose(1, 2) @ w)
    ok = (info == 0).numpy()
    chol[~torch.from_numpy(ok)] = eye
    rhs = torch.cat([torch.from_numpy(u)[:, :, None], w.transpose(1, 2) @ y_m], dim=2)  # (b, c, 1 + P)
    z = torch.linalg.solve_triangular(chol, rhs, upper=False)
    zu, zb = z[:, :, 0], z[:, :, 1:]
    gg = gg0 - (zu * zu).sum(dim=1).numpy()
    gy_k = gy + torch.einsum("bc,bcp->bp", zu, zb).numpy()
    yy = model.yy[None, :] - (y_m * y_m).sum(dim=1).numpy() - (zb * zb).sum(dim=1).numpy()
    r2 = None if model.whitening is None else mv.joint_r2_missing(idx, zb, gy_k, gg, model.whitening)
    return gg, gy_k, yy, ok, r2


@dataclass
class Stats:
    """Statistics of the testable SNPs of a chunk, float64.

    t : (v, P). beta = gy / gg and se = sqrt(resid / df) / gg, with gy (v, P), gg (v,),
    resid = gg * yy - gy^2 (v, P) and df (v,). ``bins`` (v, P) is each test's |t| histogram
    bin; ``full`` holds (v, P) beta, se, p and neg_log10_p when full statistics are written;
    ``r2`` (v,) is the joint test's R2 (None when it is off).
    """

    t: np.ndarray
    gy: np.ndarray
    gg: np.ndarray
    resid: np.ndarray
    df: np.ndarray
    bins: np.ndarray | None = None
    full: dict | None = None
    r2: np.ndarray | None = None

    def beta_se(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """beta and se of the (rows[i], cols[i]) pairs."""
        gg = self.gg[rows]
        return self.gy[rows, cols] / gg, np.sqrt(self.resid[rows, cols] / self.df[rows]) / gg

    def full_columns(self, tables: PValueTables | None = None) -> dict:
        """(v, P) beta, se, p and -log10 p of every test (p through ``tables`` when given)."""
        gg, df = self.gg[:, None], self.df[:, None]
        if tables is None:
            p = t_to_p(self.t, df)
            neg_log10_p = t_to_neg_log10_p(self.t, df, p)
        else:
            p, neg_log10_p = tables.p_and_neg_log10_p(self.t, self.df)
        return {"beta": self.gy / gg, "se": np.sqrt(self.resid / df) / gg, "p": p, "neg_log10_p": neg_log10_p}

    def replace_rows(self, rows: np.ndarray, exact: Stats) -> None:
        """Overwrite ``rows`` with ``exact`` (same SNPs recomputed), derived arrays included."""
        for name in ("t", "gy", "gg", "resid"):
            getattr(self, name)[rows] = getattr(exact, name)
        if self.r2 is not None and exact.r2 is not None:
            self.r2[rows] = exact.r2
        if self.bins is not None and exact.bins is not None:
            self.bins[rows] = exact.bins
        if self.full is not None:
            for name, values in exact.full_columns().items():
                self.full[name][rows] = values


def statistics(s: Sums) -> Stats:
    """t = <g,y> sqrt(df) / sqrt(<g,g><y,y> - <g,y>^2), the OLS t of the SNP (Frisch-Waugh-Lovell)."""
    yy = s.yy if s.yy.ndim == 2 else s.yy[None, :]
    resid = np.maximum(s.gg[:, None] * yy - s.gy * s.gy, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = s.gy * np.sqrt(s.df)[:, None] / np.sqrt(resid)
    return Stats(t=t, gy=s.gy, gg=s.gg, resid=resid, df=s.df, r2=s.r2)


def refine(block: Block, rows: np.ndarray, model: NullModel, cfg: GwasConfig) -> Stats:
    """Recompute SNPs ``rows`` of a block in float64 from their dosages (exact hits in float32 runs)."""
    g, gg0, _, miss = _center(block.raw[block.rows[rows]], "float64")
    if cfg.missing == "drop" and miss is not None:
        miss_rows, miss_idx = _missing_index(miss, model.n_samples)
    else:
        miss_rows, miss_idx = np.empty(0, dtype=np.int64), np.empty((0, 0), dtype=np.int64)
    sub = Block(variants=block.variants.iloc[rows], g=g, gg0=gg0, n_obs=block.n_obs[rows],
                maf=block.maf[rows], miss_rows=miss_rows, miss_idx=miss_idx, rows=block.rows[rows],
                raw=block.raw, skipped={})
    return statistics(chunk_sums(sub, model, cfg, model.rhs64))


def drop_rows(block: Block, sums: Sums, keep: np.ndarray) -> tuple[Block, Sums]:
    """Block and sums restricted to rows ``keep`` (SNPs that could be tested)."""
    yy = sums.yy[keep] if sums.yy.ndim == 2 else sums.yy
    sums = Sums(gy=sums.gy[keep], gg=sums.gg[keep], yy=yy, df=sums.df[keep], ok=sums.ok[keep],
                r2=sums.r2[keep] if sums.r2 is not None else None)
    offset = block.offset[keep] if block.offset is not None else None
    block = Block(variants=block.variants.iloc[keep].reset_index(drop=True), g=block.g[keep], offset=offset,
                  gg0=block.gg0[keep], n_obs=block.n_obs[keep], maf=block.maf[keep],
                  miss_rows=np.empty(0, np.int64), miss_idx=np.empty((0, 0), np.int64),
                  rows=block.rows[keep], raw=block.raw, skipped=block.skipped)
    return block, sums
