"""One PerDI run, files out: the t-map of every chosen dim as NIfTI and PNG, and a row per dim.

The same function runs in the Dagster step or in a SLURM job (the worker's ``perdi`` task); the
step writes the rows into ``perdi_dims``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from udip_assets.imaging.grids import Grid


def write_perdi_maps(checkpoint: str | Path, udips: np.ndarray, dims: Sequence[int], reason: str, grid: Grid,
                     out: Path, *, n_subjects: int, sigma: float, batch_size: int, device: str,
                     log: Callable[[str], None] | None = None) -> tuple[list[dict], dict]:
    """PerDI of ``dims`` on the first ``n_subjects`` rows of ``udips`` (SDs over all rows), mask then
    sigma smoothing; a NIfTI and a PNG per dim in ``out``. Returns the ``perdi_dims`` rows (less
    cohort and model_id) and ``{"n_subjects", "seconds"}``."""
    from udip_assets.imaging.anatomy import load_anatomy
    from udip_assets.interpret.atlas import symmetry_score
    from udip_assets.interpret.perdi import finish_map, perdi_t_maps, t_map_figure, udip_sd, write_t_nifti

    dims = [int(d) for d in dims]
    anatomy = load_anatomy(grid)
    if log is not None:
        log(f"PerDI of dims {dims} on {min(n_subjects, len(udips))} subjects on {device} ({reason})")
    result = perdi_t_maps(str(checkpoint), udips[:n_subjects], dims, udip_sd(udips), anatomy.brain_mask,
                          batch_size=batch_size, device=device, progress=False)
    rows = []
    for d in dims:
        t = finish_map(result.t_map(d), anatomy.brain_mask, sigma)
        nii = write_t_nifti(t, grid, out / f"perdi_dim_{d:03d}.nii.gz", dof=result.n_subjects - 1)
        png = t_map_figure(t, anatomy.t1, out / f"perdi_dim_{d:03d}.png", f"PerDI dim {d} (n={result.n_subjects})",
                           grid=grid)
        rows.append({"dim": d, "chosen_because": reason, "n_subjects": result.n_subjects,
                     "perturbation_sd": float(result.delta[dims.index(d)]), "max_abs_t": float(np.abs(t).max()),
                     "symmetry": symmetry_score(t, grid), "nifti_path": str(nii), "png_path": str(png)})
    return rows, {"n_subjects": result.n_subjects, "seconds": result.seconds}
