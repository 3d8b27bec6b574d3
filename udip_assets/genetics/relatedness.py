"""Relatedness: KING-robust kinship, UK Biobank ``ukb_rel.dat`` tables, and unrelated-sample selection.

Kinship thresholds follow KING (Manichaikul et al. 2010): > 0.354 duplicates / monozygotic twins,
0.177-0.354 first degree, 0.0884-0.177 second degree, 0.0442-0.0884 third degree. UK Biobank's
``ukb_rel.dat`` lists pairs with kinship > 0.0442; GWAS keeps one of each pair above 0.0884.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from udip_assets.errors import GenotypeError
from udip_assets.genetics.plink import to_float_dosage

UKB_REL_COLUMNS = ["ID1", "ID2", "HetHet", "IBS0", "Kinship"]
_CHUNK_VARIANTS = 4096
_CHUNK_PAIRS = 256


def _indicators(block: np.ndarray) -> tuple[np.ndarray, ...]:
    """float32 (n, v) indicators of a dosage block: observed, het, hom A1 (2), hom A2 (0), and g."""
    obs = ~np.isnan(block)
    g = np.where(obs, block, 0).astype(np.float32)
    return obs.astype(np.float32), (g == 1).astype(np.float32), (g == 2).astype(np.float32), \
        ((g == 0) & obs).astype(np.float32), g


def _king_from_counts(dist: np.ndarray, het_i: np.ndarray, het_j: np.ndarray) -> np.ndarray:
    """KING-robust between-family kinship from pair counts.

    ``dist`` = sum over SNPs typed in both of (g_i - g_j)^2 = N_Aa^(i) + N_Aa^(j) - 2 N_AaAa
    + 4 N_AA,aa, so that 1/2 - dist / (4 min(N_Aa^(i), N_Aa^(j))) equals Manichaikul's
    (N_AaAa - 2 N_AA,aa) / (2 N_min) + 1/2 - (N_Aa^(i) + N_Aa^(j)) / (4 N_min). NaN when N_min = 0.
    """
    n_min = np.minimum(het_i, het_j).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        phi = 0.5 - np.asarray(dist, np.float64) / (4.0 * n_min)
    return np.where(n_min > 0, phi, np.nan)


def king_kinship(dosage_i: np.ndarray, dosage_j: np.ndarray) -> float:
    """KING-robust kinship of two individuals.

    Parameters
    ----------
    dosage_i, dosage_j : np.ndarray
        (n_variants,) allele counts 0/1/2 of the same SNPs; missing as -1 or NaN.

    Returns
    -------
    float
        Kinship coefficient phi (0.5 self / MZ twin, 0.25 first degree, ~0 unrelated); NaN when
        neither sample is heterozygous at a SNP typed in both.

    Notes
    -----
    Manichaikul et al. (2010) between-family estimator, robust to population structure:
    phi = (N_AaAa - 2 N_AA,aa) / (2 N_Aa^(i)) + 1/2 - (N_Aa^(i) + N_Aa^(j)) / (4 N_Aa^(i)), with i
    the one of the two with fewer heterozygous calls; counts run over SNPs typed in both.
    """
    pair = to_float_dosage(np.stack([np.ravel(dosage_i), np.ravel(dosage_j)]), "dosage_i/dosage_j")
    pair = pair[:, ~np.isnan(pair).any(axis=0)]
    het = (pair == 1).sum(axis=1)
    dist = ((pair[0] - pair[1]) ** 2).sum()
    return float(_king_from_counts(dist, het[0], het[1]))


def king_all_pairs(dosage: np.ndarray) -> np.ndarray:
    """KING-robust kinship of every pair of samples, by matrix products over SNP chunks.

    Parameters
    ----------
    dosage : np.ndarray
        (n_samples, n_variants) allele counts; int8 with -1 missing, or float with NaN.

    Returns
    -------
    np.ndarray
        (n_samples, n_samples) float64 symmetric kinship; the diagonal is 0.5.

    Notes
    -----
    Same estimator as :func:`king_kinship`. Per chunk of 4,096 SNPs the counts are float32 products
    of 0/1 indicator matrices (exact: integers below 2^24), accumulated in float64:
    dist = Q M' + M Q' - 2 G G' and N_Aa^(i) over SNPs typed in j = H M', with G the counts (0 where
    missing), Q = G^2, M observed and H heterozygous indicators. Chunks with no missing call skip
    to dist = q_i + q_j - 2 G G'. Cost ~2 n^2 m flops: 1-2 s for 1,300 x 37k on 2 cores.
    """
    dosage = np.asarray(dosage)
    n, m = dosage.shape
    gram = np.zeros((n, n))
    sq = np.zeros((n, n))  # sum over pair-typed SNPs of g_i^2
    het = np.zeros((n, n))  # het count of i over SNPs typed in j
    for start in range(0, m, _CHUNK_VARIANTS):
        obs, h, _, _, g = _indicators(to_float_dosage(dosage[:, start:start + _CHUNK_VARIANTS]))
        gram += g @ g.T
        q = g * g
        if obs.all():
            sq += q.sum(axis=1, dtype=np.float64)[:, None]
            het += h.sum(axis=1, dtype=np.float64)[:, None]
        else:
            sq += q @ obs.T
            het += h @ obs.T
    dist = sq + sq.T - 2 * gram
    phi = _king_from_counts(dist, het, het.T)
    np.fill_diagonal(phi, 0.5)
    return phi


def _pair_fractions(dosage: np.ndarray, i: np.ndarray, j: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HetHet and IBS0 fractions of pairs (i[k], j[k]) over SNPs typed in both; (n_pairs,) each."""
    hethet = np.empty(i.size)
    ibs0 = np.empty(i.size)
    for s in range(0, i.size, _CHUNK_PAIRS):
        a = to_float_dosage(dosage[i[s:s + _CHUNK_PAIRS]])  # (p, m)
        b = to_float_dosage(dosage[j[s:s + _CHUNK_PAIRS]])  # (p, m)
        both = ~(np.isnan(a) | np.isnan(b))
        n_both = np.maximum(both.sum(axis=1), 1)
        hethet[s:s + _CHUNK_PAIRS] = ((a == 1) & (b == 1)).sum(axis=1) / n_both
        ibs0[s:s + _CHUNK_PAIRS] = (np.abs(a - b) == 2).sum(axis=1) / n_both
    return hethet, ibs0


def related_pairs_table(ids: Sequence[str], dosage: np.ndarray, min_kinship: float = 0.0442) -> pd.DataFrame:
    """Pairs with KING kinship above ``min_kinship``, in UK Biobank ``ukb_rel.dat`` form.

    Parameters
    ----------
    ids : sequence of str
        (n_samples,) sample IDs, the rows of ``dosage``.
    dosage : np.ndarray
        (n_samples, n_variants) allele counts, -1 / NaN missing.
    min_kinship : float
        Pairs with kinship strictly above this are listed (UKBB: 0.0442, third degree or closer).

    Returns
    -------
    pd.DataFrame
        One row per pair (ID1 before ID2 in ``ids`` order): ``ID1``, ``ID2`` (str), ``HetHet``
        (fraction of SNPs typed in both where both are heterozygous), ``IBS0`` (fraction with
        opposite homozygotes) and ``Kinship``.

    Notes
    -----
    HetHet and IBS0 are the two axes UKBB (Bycroft et al. 2018) used to tell parent-offspring
    pairs (IBS0 ~ 0) from full siblings (IBS0 > 0) at the same kinship.
    """
    ids = [str(x) for x in ids]
    dosage = np.asarray(dosage)
    if len(ids) != dosage.shape[0]:
        raise GenotypeError(f"ids has {len(ids)} entries but dosage has {np.shape(dosage)[0]} rows (samples)")
    phi = king_all_pairs(dosage)
    i, j = np.nonzero(np.triu(phi > min_kinship, k=1))
    hethet, ibs0 = _pair_fractions(dosage, i, j)
    return pd.DataFrame({
        "ID1": np.asarray(ids, dtype=object)[i], "ID2": np.asarray(ids, dtype=object)[j],
        "HetHet": hethet, "IBS0": ibs0, "Kinship": phi[i, j],
    }, columns=UKB_REL_COLUMNS)


def write_ukb_rel(path: Path | str, df: pd.DataFrame) -> Path:
    """Write a relatedness table like UKBB's ``ukb_rel.dat``: space-separated, header, 4 decimals."""
    missing = [c for c in UKB_REL_COLUMNS if c not in df.columns]
    if missing:
        raise GenotypeError(f"relatedness table lacks columns {missing}; "
                            f"expected {' '.join(UKB_REL_COLUMNS)}")
    path = Path(path)
    df[UKB_REL_COLUMNS].to_csv(path, sep=" ", index=False, float_format="%.4f")
    return path


def read_ukb_rel(path: Path | str) -> pd.DataFrame:
    """Read a ``ukb_rel.dat``-style table; IDs as str, HetHet/IBS0/Kinship as float."""
    path = Path(path)
    if not path.is_file():
        raise GenotypeError(f"relatedness file {path} does not exist; point the cohort at its ukb_rel.dat")
    df = pd.read_csv(path, sep=r"\s+", dtype={"ID1": str, "ID2": str})
    missing = [c for c in UKB_REL_COLUMNS if c not in df.columns]
    if missing:
        raise GenotypeError(f"{path} lacks columns {missing}; expected header {' '.join(UKB_REL_COLUMNS)}")
    return df[UKB_REL_COLUMNS].astype({"HetHet": float, "IBS0": float, "Kinship": float})


def _relative_graph(ids: Sequence[str], rel: pd.DataFrame, threshold: float) -> dict[str, dict[str, float]]:
    """Adjacency {id: {relative: kinship}} of pairs above ``threshold`` among ``ids``."""
    keep = set(ids)
    graph: dict[str, dict[str, float]] = {}
    above = rel[rel["Kinship"] > threshold]
    for a, b, k in zip(above["ID1"].astype(str), above["ID2"].astype(str), above["Kinship"], strict=True):
        if a == b or a not in keep or b not in keep:
            continue
        k = max(float(k), graph.get(a, {}).get(b, -np.inf))
        graph.setdefault(a, {})[b] = k
        graph.setdefault(b, {})[a] = k
    return graph


def select_unrelated(ids: Sequence[str], rel: pd.DataFrame,
                     threshold: float = 0.0884) -> tuple[list[str], dict[str, str]]:
    """Drop as few samples as the greedy rule allows so that no kept pair exceeds ``threshold``.

    Parameters
    ----------
    ids : sequence of str
        Candidate sample IDs (unique).
    rel : pd.DataFrame
        ``ukb_rel.dat``-style table with ``ID1``, ``ID2``, ``Kinship``; pairs naming an ID not in
        ``ids`` are ignored.
    threshold : float
        Pairs with kinship strictly above it are related (0.0884: second degree or closer).

    Returns
    -------
    kept : list of str
        IDs kept, in the order of ``ids``.
    dropped : dict
        {dropped ID: reason naming the relative and kinship}.

    Notes
    -----
    Greedy vertex cover: repeatedly drop the sample with the most remaining relatives (ties: the
    smallest ID), the rule UKBB used for its "used in PCA" unrelated set. An isolated pair loses
    exactly one member, a trio centred on one person loses only that person.
    """
    ids = [str(x) for x in ids]
    if len(set(ids)) != len(ids):
        raise GenotypeError("ids must be unique; deduplicate the candidate samples before selection")
    graph = _relative_graph(ids, rel, threshold)
    heap = [(-len(nbrs), sid) for sid, nbrs in graph.items()]
    heapq.heapify(heap)
    dropped: dict[str, str] = {}
    while heap:
        neg_deg, sid = heapq.heappop(heap)
        nbrs = graph.get(sid, {})
        if sid in dropped or not nbrs:
            continue
        if -neg_deg != len(nbrs):  # stale entry: degree fell since it was pushed
            heapq.heappush(heap, (-len(nbrs), sid))
            continue
        closest = max(nbrs, key=lambda r: (nbrs[r], r))
        more = f"; and {len(nbrs) - 1} other relative(s)" if len(nbrs) > 1 else ""
        dropped[sid] = f"related to {closest} (kinship {nbrs[closest]:.3f} > {threshold:g}){more}"
        for r in nbrs:
            graph[r].pop(sid, None)
        graph[sid] = {}
    return [s for s in ids if s not in dropped], dropped
