"""``checkpoint_loci_sweep``: choose the training cohort's model_id by the loci its UDIPs find.

For every numbered checkpoint of the latest training run (every ``every_epochs``), encode the
selection cohort's scans, run the GWAS of all chromosomes and FUMA clumping, and record the loci
count in ``checkpoints`` (and as the MLflow metric ``n_loci`` of the training run). The checkpoint
with the most loci becomes the cohort's selected model, which ``udip_embeddings`` then uses. See
:mod:`udip_assets.cohort.model_selection` for why a separate selection cohort is better than the
paper's choice of its test set.
"""

import time

import dagster as dg
import pandas as pd

from udip_assets.cohort.gwas_inputs import gwas_sample
from udip_assets.cohort.model_selection import SweepPoint, loci_of_sample, patience_stop, select_by_loci
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.gwas import GwasAssetConfig
from udip_assets.defs.loci import LociConfig
from udip_assets.defs.model import encode_scans, resolve_device, split_scans, vit_ae_model
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.tracking import MlflowTracking
from udip_assets.store.schema import CHECKPOINTS


class SweepConfig(dg.Config):
    """Which checkpoints, on which subjects, and the patience rule (epochs without a gain)."""

    every_epochs: int = 10
    selection_cohort: str | None = None
    selection_split: str = "inference"
    patience_epochs: int = 100
    batch_size: int = 4
    device: str = "auto"
    gwas: GwasAssetConfig = GwasAssetConfig()
    loci: LociConfig = LociConfig()


@dg.asset(partitions_def=cohort_partitions, group_name="model", deps=[vit_ae_model], kinds={"pytorch", "duckdb"})
def checkpoint_loci_sweep(context: dg.AssetExecutionContext, config: SweepConfig, home: UdipHome,
                          mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Loci count per checkpoint (every k epochs) on a selection cohort; the best becomes the model_id."""
    cohort = context.partition_key
    sel = config.selection_cohort or cohort
    ck = home.query("SELECT * FROM checkpoints WHERE cohort = ? ORDER BY created_at DESC, epoch", [cohort])
    if ck.empty:
        raise dg.Failure(f"cohort {cohort} has no checkpoints; materialize vit_ae_model first")
    ck = ck[ck["run_id"] == ck["run_id"].iloc[0]].sort_values("epoch").reset_index(drop=True)
    todo = ck[ck["epoch"] % config.every_epochs == 0]
    if todo.empty:
        raise dg.Failure(f"no checkpoint of run {ck['run_id'].iloc[0]} falls on a multiple of "
                         f"every_epochs={config.every_epochs}; saved epochs: {ck['epoch'].tolist()}")
    spec = load_cohort(home.cohort_dir(sel))
    subjects = home.query("SELECT * FROM subjects WHERE cohort = ?", [sel])
    scans = split_scans(home, sel, (config.selection_split,))
    points = []
    for row in todo.itertuples():
        started = time.perf_counter()
        rows, _ = encode_scans(home, sel, row.model_id, row.path, scans, batch_size=config.batch_size,
                               device=resolve_device(config.device))
        sample = gwas_sample(subjects, rows, config.gwas.covariate_spec(), split=config.selection_split)
        clump = config.loci.to_domain(sample.phenotypes.shape[1])  # 5e-8 / this model's dims
        loci, n_sig = loci_of_sample(sample, spec.genotypes, config.gwas.to_domain(), clump,
                                     ld_method=config.loci.ld_method)
        points.append(SweepPoint(int(row.epoch), row.model_id, len(loci), n_sig))
        context.log.info(f"{row.model_id}: {len(loci)} loci, {n_sig} significant SNPs "
                         f"({time.perf_counter() - started:.0f} s)")
        if row.mlflow_run_id:
            metrics = {"n_loci": len(loci), "n_significant_snps": n_sig}
            mlflow.log_to_run(row.mlflow_run_id, metrics, step=int(row.epoch))
    best = select_by_loci(points)
    _record(home, ck, points, best)
    stop = patience_stop(points, config.patience_epochs)
    return dg.MaterializeResult(metadata={
        "model_id": best.model_id, "selected_epoch": best.epoch, "selected_n_loci": best.n_loci,
        "selection_cohort": sel, "selection_split": config.selection_split,
        "loci_by_epoch": dg.MetadataValue.json({p.epoch: p.n_loci for p in points}),
        "patience_stop_epoch": stop if stop is not None else "never (within the evaluated epochs)"})


def _record(home: UdipHome, ck: pd.DataFrame, points: list[SweepPoint], best: SweepPoint) -> None:
    """Write the loci counts and the selection into the training run's ``checkpoints`` rows."""
    by_id = {p.model_id: p for p in points}
    ck = ck.copy()
    ck["loci_count"] = [by_id[m].n_loci if m in by_id else c for m, c in zip(ck["model_id"], ck["loci_count"],
                                                                              strict=True)]
    ck["n_significant_snps"] = [by_id[m].n_significant_snps if m in by_id else None for m in ck["model_id"]]
    ck["selected"] = ck["model_id"] == best.model_id
    part = {"cohort": ck["cohort"].iloc[0], "run_id": ck["run_id"].iloc[0]}
    home.write(CHECKPOINTS, ck[[c for c in CHECKPOINTS.column_names if c in ck.columns]], **part)
    # one selected checkpoint per cohort: an earlier run's selection is withdrawn
    others = home.query("SELECT * FROM checkpoints WHERE cohort = ? AND run_id <> ? AND selected",
                        [part["cohort"], part["run_id"]])
    for run_id in others["run_id"].unique():
        old = home.query("SELECT * FROM checkpoints WHERE cohort = ? AND run_id = ?", [part["cohort"], run_id])
        home.write(CHECKPOINTS, old.assign(selected=False)[[c for c in CHECKPOINTS.column_names if c in old.columns]],
                   cohort=part["cohort"], run_id=run_id)


selection_assets = [checkpoint_loci_sweep]
