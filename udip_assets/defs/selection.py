"""``checkpoint_loci_sweep``: choose a training run's model_id by the loci its UDIPs find.

For every numbered checkpoint of the training run ``vit_ae_model`` returned (every
``every_epochs``), encode the selection cohort's scans; then the GWAS of all chromosomes of every
checkpoint's UDIPs in one pass over the genotypes and FUMA clumping of each
(:func:`~udip_assets.genetics.discovery.discover_minp_loci_of_sets`, the pipeline's own path) and
record the loci count in ``model_selection`` (this asset is its only writer; the MLflow metric
``n_loci`` of the training run too). The checkpoint with the most loci is the asset's output,
which ``udip_embeddings`` takes as its input. Its UDIPs go to ``sweep_udips``, from which
``udip_embeddings`` copies them instead of encoding the same scans again. See
:mod:`udip_assets.cohort.model_selection` for why a separate selection cohort is better than the
paper's choice of its test set.
"""

import time
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from udip_assets.cohort.gwas_inputs import gwas_sample
from udip_assets.cohort.model_selection import SweepPoint, loci_of_samples, patience_stop, select_by_loci
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.cohort_defaults import with_cohort_defaults
from udip_assets.defs.compute import GPU_STEP, step_tags
from udip_assets.defs.gwas import GwasAssetConfig
from udip_assets.defs.lineage import LINEAGE_IO, ModelRef
from udip_assets.defs.loci import LociConfig
from udip_assets.defs.model import encode_scans, resolve_device, split_scans, stored_udips
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.tracking import MlflowTracking
from udip_assets.model.registry import model_uri, register_checkpoint
from udip_assets.store.schema import MODEL_SELECTION, model_udip_columns, udips_table


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


@dg.asset(partitions_def=cohort_partitions, group_name="model", ins={"trained": dg.AssetIn("vit_ae_model")},
          kinds={"pytorch", "duckdb"}, io_manager_key=LINEAGE_IO, op_tags=step_tags(GPU_STEP))
def checkpoint_loci_sweep(context: dg.AssetExecutionContext, config: SweepConfig, home: UdipHome,
                          mlflow: MlflowTracking, trained: ModelRef) -> dg.Output[ModelRef]:
    """Loci count per checkpoint (every k epochs) on a selection cohort; the best is the cohort's model."""
    config = with_cohort_defaults(config, home, context.partition_key, "checkpoint_loci_sweep")
    cohort, sel = context.partition_key, config.selection_cohort or context.partition_key
    todo = _checkpoints_to_sweep(home, trained, config.every_epochs)
    spec = load_cohort(home.cohort_dir(sel))
    subjects = home.query("SELECT * FROM subjects WHERE cohort = ?", [sel])
    scans = split_scans(home, sel, (config.selection_split,))
    started = time.perf_counter()
    samples = {}
    for row in todo.itertuples():
        rows = _sweep_udips(home, sel, row, scans, config)
        samples[row.model_id] = gwas_sample(subjects, rows, config.gwas.covariate_spec(), split=config.selection_split)
    n_subjects = len(next(iter(samples.values())).phenotypes)
    context.log.info(f"{len(samples)} checkpoints encoded ({time.perf_counter() - started:.0f} s); their GWAS in "
                     "one pass over the genotypes")
    started = time.perf_counter()
    clump = config.loci.to_domain(next(iter(samples.values())).phenotypes.shape[1])  # 5e-8 / the dims
    found = loci_of_samples(samples, spec.genotypes, config.gwas.to_domain(), clump, ld_method=config.loci.ld_method)
    points = []
    for row in todo.itertuples():
        loci, n_sig = found[row.model_id]
        points.append(SweepPoint(int(row.epoch), row.model_id, len(loci), n_sig))
        context.log.info(f"{row.model_id}: {len(loci)} loci, {n_sig} significant SNPs")
        if row.mlflow_run_id:
            mlflow.log_to_run(row.mlflow_run_id, {"n_loci": len(loci), "n_significant_snps": n_sig},
                              step=int(row.epoch))
    context.log.info(f"GWAS and loci of {len(points)} checkpoints: {time.perf_counter() - started:.0f} s")
    best = select_by_loci(points)
    home.write(MODEL_SELECTION, selection_rows(cohort, trained.run_id, points, best, sel, config.selection_split,
                                               n_subjects), cohort=cohort)
    stop = patience_stop(points, config.patience_epochs)
    version = _register(home, mlflow, cohort, best.model_id, trained.run_id, context.run.run_id)
    return dg.Output(ModelRef(cohort=cohort, model_id=best.model_id, run_id=trained.run_id, n_dims=trained.n_dims),
                     metadata={
        "selected_epoch": best.epoch, "selected_n_loci": best.n_loci,
        "registered_model": dg.MetadataValue.text(f"{model_uri(cohort)} (version {version})"),
        "selection_cohort": sel, "selection_split": config.selection_split,
        "loci_by_epoch": dg.MetadataValue.json({p.epoch: p.n_loci for p in points}),
        "patience_stop_epoch": stop if stop is not None else "never (within the evaluated epochs)"})


def _register(home: UdipHome, mlflow: MlflowTracking, cohort: str, model_id: str, training_run: str,
              dagster_run_id: str) -> int:
    """The selected checkpoint as a version of the registered model, under the cohort's alias."""
    ck = home.query("SELECT path, mlflow_run_id FROM checkpoints WHERE model_id = ?", [model_id]).iloc[0]
    return register_checkpoint(mlflow.resolved_uri(), ck["path"], cohort=cohort, model_id=model_id,
                               mlflow_run_id=ck["mlflow_run_id"] or None,
                               tags={"training_run": training_run, "dagster_run_id": dagster_run_id})


def _checkpoints_to_sweep(home: UdipHome, trained: ModelRef, every_epochs: int) -> pd.DataFrame:
    """The ``checkpoints`` rows of the training run at epochs that are multiples of ``every_epochs``."""
    ck = home.query("SELECT * FROM checkpoints WHERE cohort = ? AND run_id = ? ORDER BY epoch",
                    [trained.cohort, trained.run_id])
    if ck.empty:
        raise dg.Failure(f"training run {trained.run_id} has no checkpoints in the warehouse; "
                         "re-materialize vit_ae_model")
    todo = ck[ck["epoch"] % every_epochs == 0]
    if todo.empty:
        raise dg.Failure(f"no checkpoint of run {trained.run_id} falls on a multiple of every_epochs={every_epochs}; "
                         f"saved epochs: {ck['epoch'].tolist()}")
    return todo


def _sweep_udips(home: UdipHome, cohort: str, row, scans: pd.DataFrame, config: SweepConfig) -> pd.DataFrame:
    """UDIPs of ``scans`` under checkpoint ``row``: from ``sweep_udips`` when there, else encoded and stored."""
    rows = stored_udips(home, "sweep_udips", cohort, row.model_id, scans["subject_id"])
    if rows is None:
        rows = encode_scans(row.path, scans, batch_size=config.batch_size, device=resolve_device(config.device))
        home.write(udips_table(len(model_udip_columns(rows)), name="sweep_udips"),
                   rows.assign(cohort=cohort, model_id=row.model_id), cohort=cohort, model_id=row.model_id)
    return rows


def selection_rows(cohort: str, run_id: str, points: list[SweepPoint], best: SweepPoint, selection_cohort: str,
                   selection_split: str, n_subjects: int) -> pd.DataFrame:
    """``model_selection`` rows of one sweep: one per evaluated checkpoint, the chosen one ``selected``."""
    now = datetime.now(UTC).replace(tzinfo=None)
    return pd.DataFrame([{"cohort": cohort, "run_id": run_id, "model_id": p.model_id, "epoch": p.epoch,
                          "selection_cohort": selection_cohort, "selection_split": selection_split,
                          "n_subjects": n_subjects, "loci_count": p.n_loci, "n_significant_snps": p.n_significant_snps,
                          "selected": p.model_id == best.model_id, "evaluated_at": now} for p in points])


selection_assets = [checkpoint_loci_sweep]
