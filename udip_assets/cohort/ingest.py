"""Ingest: validate every scan of a cohort, preprocess the kept ones into the training cache.

Plain functions over a :class:`CohortSpec`; the Dagster assets in ``udip_assets.defs.ingest`` call
them and write the returned frames to the warehouse.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from udip_assets.cohort.spec import CohortSpec, find_scans
from udip_assets.imaging.nifti import validate_scan
from udip_assets.imaging.preprocess import PreprocessConfig, preprocess_scan


def validate_cohort_scans(spec: CohortSpec, progress: bool = True) -> pd.DataFrame:
    """Validate every scan the cohort names; one row per file, bad ones with their reason.

    Returns
    -------
    DataFrame
        Columns of the ``scans`` table except ``cohort``: ``subject_id, visit, path, status, error,
        shape, voxel_mm, n_nonzero, mean_intensity, checked_at``.
    """
    found = find_scans(spec)
    rows = []
    for rec in tqdm(found.itertuples(index=False), total=len(found), desc=f"validate {spec.name}",
                    unit="scan", disable=not progress):
        check = validate_scan(rec.path, spec.grid)
        rows.append(
            {
                "subject_id": str(rec.subject_id),
                "visit": int(rec.visit),
                "path": rec.path,
                "status": check.status,
                "error": check.error,
                "shape": "x".join(map(str, check.shape)) if check.shape else None,
                "voxel_mm": "x".join(f"{v:g}" for v in check.voxel_mm) if check.voxel_mm else None,
                "n_nonzero": check.n_nonzero,
                "mean_intensity": check.mean_intensity,
                "checked_at": dt.datetime.now(dt.UTC).replace(tzinfo=None),
            }
        )
    return pd.DataFrame(rows, columns=[
        "subject_id", "visit", "path", "status", "error", "shape", "voxel_mm", "n_nonzero",
        "mean_intensity", "checked_at",
    ])


def cache_path_for(cache_dir: Path, subject_id: str, visit: int) -> Path:
    """Where a subject's preprocessed scan lives in the cache."""
    return Path(cache_dir) / f"{subject_id}_{visit}.npy"


def preprocess_subjects(
    subjects: pd.DataFrame,
    spec: CohortSpec,
    cache_dir: Path,
    cfg: PreprocessConfig,
    previous: pd.DataFrame | None = None,
    progress: bool = True,
) -> tuple[pd.DataFrame, dict[str, str]]:
    """Preprocess the kept subjects' scans into ``cache_dir``; reuse caches that are still current.

    Parameters
    ----------
    subjects : DataFrame
        Kept subjects: ``subject_id, visit, scan_path, split``.
    previous : DataFrame, optional
        The cohort's earlier ``preprocessed_scans`` rows. A row is reused when its cache file
        exists, is newer than its source scan, and has the shape this configuration produces.

    Returns
    -------
    rows : DataFrame
        ``preprocessed_scans`` rows (without ``cohort``), one per subject: status 'ok', or 'failed'
        with its ``reason`` and no cache.
    failures : dict
        ``{subject_id: reason}`` for scans that could not be preprocessed (the run goes on).
    """
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    target_shape = "x".join(map(str, spec.grid.padded_shape(cfg.patch)))
    reusable = _reusable_rows(previous, target_shape)
    rows, failures = [], {}
    for rec in tqdm(subjects.itertuples(index=False), total=len(subjects), desc=f"preprocess {spec.name}",
                    unit="scan", disable=not progress):
        dst = cache_path_for(cache_dir, rec.subject_id, int(rec.visit))
        old = reusable.get((rec.subject_id, str(rec.scan_path), str(dst)))
        if old is not None and dst.exists() and dst.stat().st_mtime >= Path(rec.scan_path).stat().st_mtime:
            rows.append({**old, "split": rec.split, "visit": int(rec.visit)})
            continue
        base = {"subject_id": rec.subject_id, "visit": int(rec.visit), "split": rec.split,
                "source_path": str(rec.scan_path)}
        try:
            res = preprocess_scan(rec.scan_path, dst, spec.grid, cfg)
        except (RuntimeError, ValueError, OSError) as exc:
            failures[rec.subject_id] = f"{rec.scan_path}: {exc}"
            rows.append({**base, "status": "failed", "reason": failures[rec.subject_id]})
            continue
        rows.append(
            {
                **base,
                "status": "ok",
                "cache_path": str(dst),
                "shape": "x".join(map(str, res.shape)),
                "n_mask_voxels": int(res.n_mask_voxels),
                "raw_mean": float(res.raw_mean),
                "raw_sd": float(res.raw_sd),
                "seconds": float(res.seconds),
            }
        )
    return pd.DataFrame(rows), failures


def _reusable_rows(previous: pd.DataFrame | None, target_shape: str) -> Mapping[tuple, dict]:
    if previous is None or previous.empty:
        return {}
    ok = previous[previous["shape"] == target_shape]
    if "status" in ok.columns:  # rows of failed scans are tried again
        ok = ok[ok["status"].fillna("ok") == "ok"]
    return {
        (r["subject_id"], r["source_path"], r["cache_path"]): {k: v for k, v in r.items() if k != "cohort"}
        for r in ok.to_dict("records")
    }


def zscore_summary(cache_paths: list[str], mask_from_nonzero: bool = True) -> pd.DataFrame:
    """Mean and sd of the non-zero voxels of cached volumes (what a z-scored cache should be: 0, 1)."""
    out = []
    for path in cache_paths:
        vol = np.load(path, mmap_mode="r")
        inside = np.asarray(vol[vol != 0], dtype=np.float64) if mask_from_nonzero else np.asarray(vol, np.float64)
        out.append((path, float(inside.mean()), float(inside.std())))
    return pd.DataFrame(out, columns=["cache_path", "mean", "sd"])
