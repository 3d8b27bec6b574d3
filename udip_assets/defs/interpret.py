"""Interpretation assets: PerDI maps and their atlas regions, attention spotlights, SmoothGrad saliency.

``perdi_maps`` perturbs the dims the loci point at (the paper's choice: the five with the most
significant SNPs plus the dims of novel loci) by 1 SD, decodes, and writes one voxelwise paired-t
NIfTI and PNG per dim (``perdi_dims``); ``perdi_regions`` ranks the atlas regions each map touches
(``perdi_regions``). ``attention_maps`` and ``saliency_maps`` read the model that encoded the
cohort's UDIPs. Each takes its model from its inputs (:mod:`udip_assets.defs.lineage`); the
domain code is in :mod:`udip_assets.interpret`.
"""

from pathlib import Path

import dagster as dg
import nibabel as nib
import numpy as np
import pandas as pd

from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.cohort_defaults import with_cohort_defaults
from udip_assets.defs.compute import GPU_STEP, Compute, step_tags, task_report
from udip_assets.defs.lineage import LINEAGE_IO, ModelRef
from udip_assets.defs.metadata import figure, table_metadata
from udip_assets.defs.model import checkpoint_row, resolve_device, split_scans
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.store.schema import (
    ATTENTION_SPOTLIGHT,
    PERDI_DIMS,
    PERDI_REGIONS,
    QK_SPECTRUM,
    model_udip_columns,
)


class PerdiConfig(dg.Config):
    """Which dims (None = the paper's rule), how many subjects, and the smoothing."""

    dims: list[int] | None = None
    n_top: int = 5
    n_subjects: int = 500
    sigma: float = 1.0
    batch_size: int = 8
    device: str = "auto"


class AtlasConfig(dg.Config):
    """The atlas: None = AAL3 + ventricles; else a labelled NIfTI and its id,name[,hemisphere] table
    (e.g. Harvard-Oxford)."""

    atlas_nifti: str | None = None
    atlas_labels: str | None = None


def locus_dims(home: UdipHome, cohort: str, model_id: str) -> list[int]:
    """Dims of the model's loci: every significant dim of a minP locus, and the best univariate dim at
    the top SNP of a joint-test locus (which has no single dim)."""
    if not home.has_table("genomic_risk_loci"):
        return []
    loci = home.query("SELECT method, rsID, dims FROM genomic_risk_loci WHERE cohort = ? AND model_id = ?",
                      [cohort, model_id])
    dims = [int(d) for v in loci.loc[loci["method"].fillna("minp") == "minp", "dims"].dropna()
            for d in str(v).split(";") if d != ""]
    joint = loci.loc[loci["method"] == "multivariate", "rsID"].tolist()
    if joint:
        marks = ", ".join("?" for _ in joint)
        best = home.query(f"SELECT dim FROM minp WHERE cohort = ? AND model_id = ? AND snp IN ({marks})",
                          [cohort, model_id, *joint])
        dims += [int(d) for d in best["dim"]]
    return list(dict.fromkeys(dims))


@dg.asset(partitions_def=cohort_partitions, group_name="interpret", ins={"model": dg.AssetIn("minp_sumstats")},
          deps=["genomic_risk_loci"], kinds={"nifti", "duckdb"}, io_manager_key=LINEAGE_IO, op_tags=step_tags(GPU_STEP))
def perdi_maps(context: dg.AssetExecutionContext, config: PerdiConfig, home: UdipHome, compute: Compute,
               model: ModelRef) -> dg.Output[ModelRef]:
    """PerDI: voxelwise paired t of the decoder's response to +1 SD on each chosen dim (NIfTI + PNG per dim)."""
    from udip_assets.interpret.perdi import choose_dims
    from udip_assets.interpret.perdi_run import write_perdi_maps

    cohort, model_id = context.partition_key, model.model_id
    config = with_cohort_defaults(config, home, cohort, "perdi_maps")
    grid = load_cohort(home.cohort_dir(cohort)).grid
    minp = home.query("SELECT dim, p, significant FROM minp WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    dims, reason = choose_dims(minp, novel_dims=locus_dims(home, cohort, model_id), explicit=config.dims,
                               n_top=config.n_top)
    udips = home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ? AND split = 'inference' "
                       "ORDER BY subject_id", [cohort, model_id])
    matrix = udips[model_udip_columns(udips)].to_numpy(np.float64)
    checkpoint = checkpoint_row(home, model_id)["path"]
    out = home.artifacts("perdi", cohort, model_id)
    if compute.resolved_backend() == "slurm":
        rows, info = _perdi_job(context, compute, home.cohort_dir(cohort), checkpoint, matrix, dims, reason, out,
                                config)
    else:
        rows, info = write_perdi_maps(checkpoint, matrix, dims, reason, grid, out, n_subjects=config.n_subjects,
                                      sigma=config.sigma, batch_size=config.batch_size,
                                      device=resolve_device(config.device), log=context.log.info)
    table = pd.DataFrame(rows)
    home.write(PERDI_DIMS, table.assign(cohort=cohort, model_id=model_id), cohort=cohort, model_id=model_id)
    return dg.Output(model, metadata={
        "dims": dg.MetadataValue.json(list(dims)), "chosen_because": reason, "n_subjects": info["n_subjects"],
        "seconds": round(info["seconds"], 1), "compute": compute.resolved_backend(),
        "folder": dg.MetadataValue.path(str(out)),
        "preview": figure(rows[0]["png_path"], f"PerDI dim {dims[0]}"),
        **table_metadata(home, PERDI_DIMS, cohort=cohort, model_id=model_id)})


def _perdi_job(context: dg.AssetExecutionContext, compute: Compute, cohort_dir: Path, checkpoint: str,
               matrix: np.ndarray, dims, reason: str, out: Path, config: PerdiConfig) -> tuple[list[dict], dict]:
    """:func:`~udip_assets.interpret.perdi_run.write_perdi_maps` as a SLURM job (the worker's ``perdi``
    task): the UDIP matrix goes as a .npy into ``out``; the maps come back as files, the rows as the
    job's report; ``device`` 'auto' is resolved on the node."""
    from udip_assets.atomic import atomic_path

    udips_file = out / "perdi_udips.npy"
    with atomic_path(udips_file, suffix=".npy") as tmp:
        np.save(tmp, matrix)
    done = compute.run_job(context, "perdi", ["-m", "udip_assets.cluster.worker", "perdi"], job_dir=out / "job",
                           job_name=f"udip-perdi-{out.parent.name}"[:60],
                           extras={"checkpoint": str(checkpoint), "udips": str(udips_file), "dims": list(dims),
                                   "reason": reason, "cohort_dir": str(cohort_dir), "out": str(out),
                                   "n_subjects": config.n_subjects, "sigma": config.sigma,
                                   "batch_size": config.batch_size, "device": config.device})
    summary = task_report(done, "perdi")
    return summary["rows"], summary["info"]


@dg.asset(partitions_def=cohort_partitions, group_name="interpret", ins={"maps": dg.AssetIn("perdi_maps")},
          kinds={"duckdb"})
def perdi_regions(context: dg.AssetExecutionContext, config: AtlasConfig, home: UdipHome,
                  maps: ModelRef) -> dg.MaterializeResult:
    """The atlas regions each PerDI map touches, ranked per dim (1 = most affected)."""
    cohort, model_id = context.partition_key, maps.model_id
    atlas = _atlas(home, cohort, config)
    dims = home.query("SELECT dim, nifti_path FROM perdi_dims WHERE cohort = ? AND model_id = ? ORDER BY dim",
                      [cohort, model_id])
    from udip_assets.interpret.atlas import region_table

    parts = [region_table(np.asarray(nib.load(row.nifti_path).dataobj, dtype=np.float64), atlas).assign(dim=row.dim)
             for row in dims.itertuples()]
    table = pd.concat(parts, ignore_index=True).assign(atlas=atlas.name, cohort=cohort, model_id=model_id)
    table["rank"] = table["rank"].astype("Int64")
    home.write(PERDI_REGIONS, table[[c for c in PERDI_REGIONS.column_names if c in table.columns]],
               cohort=cohort, model_id=model_id)
    top = {int(d): rows.nsmallest(3, "rank")["region"].tolist() for d, rows in table.groupby("dim")}
    if atlas.lost:
        context.log.warning(f"atlas {atlas.name}: labels {list(atlas.lost)} have no voxel on grid {atlas.grid.name}")
    return dg.MaterializeResult(metadata={"model_id": model_id, "atlas": atlas.name, "n_rows": len(table),
                                          "top_regions": dg.MetadataValue.json(top),
                                          **table_metadata(home, PERDI_REGIONS, cohort=cohort, model_id=model_id)})


def _atlas(home: UdipHome, cohort: str, config: AtlasConfig):
    from udip_assets.interpret.atlas import default_atlas, load_atlas

    grid = load_cohort(home.cohort_dir(cohort)).grid
    if config.atlas_nifti is None:
        return default_atlas(grid)
    if config.atlas_labels is None:
        raise dg.Failure(f"atlas_nifti {config.atlas_nifti} needs atlas_labels, its id,name[,hemisphere] table")
    return load_atlas(config.atlas_nifti, config.atlas_labels, grid)


class AttentionConfig(dg.Config):
    """Subjects whose encoder attention is summarised, and the spotlight rule (mean + n_sd SD)."""

    n_subjects: int = 16
    batch_size: int = 2
    n_sd: float = 2.0
    device: str = "auto"


@dg.asset(partitions_def=cohort_partitions, group_name="interpret", ins={"embedded": dg.AssetIn("udip_embeddings")},
          kinds={"pytorch", "duckdb"}, op_tags=step_tags(GPU_STEP))
def attention_maps(context: dg.AssetExecutionContext, config: AttentionConfig, home: UdipHome,
                   embedded: ModelRef) -> dg.MaterializeResult:
    """Spotlight tokens (patches most others attend to), patch-embedding correlations, W_K^T W_Q spectra."""
    import torch

    from udip_assets.imaging.anatomy import load_anatomy
    from udip_assets.imaging.preprocess import load_preprocessed
    from udip_assets.interpret.attention import (
        embedding_correlation_figure,
        patch_embedding_correlation,
        qk_singular_values,
        summarize_attention,
        write_spotlight_maps,
    )
    from udip_assets.model.checkpoint import load_checkpoint

    cohort, model_id = context.partition_key, embedded.model_id
    config = with_cohort_defaults(config, home, cohort, "attention_maps")
    grid = load_cohort(home.cohort_dir(cohort)).grid
    net = load_checkpoint(checkpoint_row(home, model_id)["path"], device=resolve_device(config.device)).model
    paths = split_scans(home, cohort, ("inference",))["cache_path"].tolist()[:config.n_subjects]
    summary = summarize_attention(net, paths, grid, batch_size=config.batch_size, n_sd=config.n_sd)
    part = {"cohort": cohort, "model_id": model_id}
    home.write(ATTENTION_SPOTLIGHT, summary.assign(**part), **part)
    home.write(QK_SPECTRUM, qk_singular_values(net).assign(**part), **part)
    out = home.artifacts("attention", cohort, model_id)
    nii, png = write_spotlight_maps(summary, net.cfg, grid, out, background=load_anatomy(grid).t1)
    x = torch.from_numpy(np.stack([load_preprocessed(p).astype(np.float32) for p in paths[:4]]))
    corr, _ = patch_embedding_correlation(net, x)
    corr_png = embedding_correlation_figure(corr, out / "patch_embedding_correlation.png")
    spot = summary[summary["is_spotlight"]]
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "n_subjects": len(paths), "n_spotlight_rows": len(spot),
        "spotlight_patches": dg.MetadataValue.json(sorted({int(p) for p in spot["patch_index"]})),
        "spotlight_nifti": dg.MetadataValue.path(str(nii)),
        "correlation": figure(corr_png, "patch embedding correlation"),
        "preview": figure(png, "spotlight tokens"), **table_metadata(home, ATTENTION_SPOTLIGHT, **part)})


class SaliencyConfig(dg.Config):
    """SmoothGrad of one dim (None = the first PerDI dim) on ``n_subjects`` scans, seeded."""

    dim: int | None = None
    n_subjects: int = 2
    n_samples: int = 16
    noise_sd: float = 0.5
    seed: int = 0
    device: str = "auto"


@dg.asset(partitions_def=cohort_partitions, group_name="interpret", ins={"maps": dg.AssetIn("perdi_maps")},
          kinds={"pytorch", "nifti"}, op_tags=step_tags(GPU_STEP))
def saliency_maps(context: dg.AssetExecutionContext, config: SaliencyConfig, home: UdipHome,
                  maps: ModelRef) -> dg.MaterializeResult:
    """SmoothGrad of a UDIP dim w.r.t. the input, and original vs reconstruction vs |difference| of two scans."""
    from udip_assets.imaging.anatomy import load_anatomy
    from udip_assets.interpret.saliency import smoothgrad, write_saliency_maps
    from udip_assets.model.checkpoint import load_checkpoint
    from udip_assets.model.extract import reconstruction_figure

    cohort, model_id = context.partition_key, maps.model_id
    config = with_cohort_defaults(config, home, cohort, "saliency_maps")
    grid = load_cohort(home.cohort_dir(cohort)).grid
    dims = home.query("SELECT dim FROM perdi_dims WHERE cohort = ? AND model_id = ?", [cohort, model_id])["dim"]
    dim = config.dim if config.dim is not None else int(dims.iloc[0])
    net = load_checkpoint(checkpoint_row(home, model_id)["path"], device=resolve_device(config.device)).model
    scans = split_scans(home, cohort, ("inference",)).head(config.n_subjects)
    out = home.artifacts("saliency", cohort, model_id)
    background = load_anatomy(grid).t1
    files = []
    for i, path in enumerate(scans["cache_path"]):
        sal = smoothgrad(net, path, dim, grid, n_samples=config.n_samples, noise_sd=config.noise_sd, seed=config.seed)
        files.append(write_saliency_maps(sal, grid, out / f"smoothgrad_dim_{dim:03d}_scan{i}.nii.gz",
                                         out / f"smoothgrad_dim_{dim:03d}_scan{i}.png",
                                         title=f"SmoothGrad of dim {dim}, scan {i + 1}", background=background))
    shown = scans["cache_path"].tolist()[:2]  # the paper's figure shows two subjects; fewer if fewer were asked for
    recon = reconstruction_figure(net, shown, ["scan A", "scan B"][:len(shown)],
                                  out / "reconstruction_difference.png", difference=True)
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "dim": dim, "n_scans": len(files), "seed": config.seed,
        "smoothgrad": dg.MetadataValue.path(str(files[0][0])), "reconstruction": figure(recon, "reconstructions"),
        "preview": figure(files[0][1], f"SmoothGrad of dim {dim}")})


interpret_assets = [perdi_maps, perdi_regions, attention_maps, saliency_maps]
