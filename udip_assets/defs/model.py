"""Model assets: train the ViT-AE (tracked in MLflow), encode scans into UDIPs, reconstruction QC.

``vit_ae_model`` trains on a cohort's train/val split; its training id is a hash of the resolved
configuration and the cohort, so re-materializing the same configuration resumes (or reuses) the
run's checkpoints instead of starting over. It is the only writer of ``checkpoints``.
``udip_embeddings`` encodes the GWAS split with the model the loci sweep selected (its input, see
:mod:`udip_assets.defs.lineage`) and is the only writer of ``udips``; ``reconstruction_qc``
summarises the per-scan losses of those UDIPs.
"""

import hashlib
import json
import os
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import pandas as pd

from udip_assets.atomic import write_text_atomic
from udip_assets.cohort.spec import load_cohort
from udip_assets.defs.cohort_defaults import with_cohort_defaults
from udip_assets.defs.compute import GPU_STEP, Compute, step_tags, task_report
from udip_assets.defs.lineage import LINEAGE_IO, OPTIONAL, ModelRef
from udip_assets.defs.metadata import figure as inline_figure
from udip_assets.defs.metadata import table_metadata
from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome
from udip_assets.defs.tracking import MlflowTracking
from udip_assets.interpret.qc import (
    DecoderSpreadAccumulator,
    effective_rank,
    extreme_outliers,
    loss_figure,
    udip_violin_figure,
)
from udip_assets.model.checkpoint import epoch_checkpoint_name, load_checkpoint, model_id_for
from udip_assets.model.config import preset
from udip_assets.model.extract import extract_udips, iter_reconstructions, reconstruction_figure
from udip_assets.model.train import EpochMetrics, TrainCallback, train_model
from udip_assets.store.schema import (
    CHECKPOINTS,
    SWEEP_UDIPS,
    TRAINING_EPOCHS,
    UDIP_SPECTRUM,
    model_udip_columns,
    udips_table,
)


class ModelAssetConfig(dg.Config):
    """The preset and the ModelConfig / TrainConfig fields to override, each a typed launchpad field.

    A field left None keeps the preset's value. ``overrides_json`` (a JSON object) reaches any other
    field of either dataclass; a field set both ways is an error.
    """

    preset: str = "auto"
    device: str = "auto"
    epochs: int | None = None
    checkpoint_every: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    lr_step_epochs: int | None = None
    enc_dim: int | None = None
    enc_depth: int | None = None
    enc_heads: int | None = None
    dec_dim: int | None = None
    dec_depth: int | None = None
    dec_heads: int | None = None
    patch: list[int] | None = None
    overrides_json: str = "{}"
    # > 1: train with DDP on this many processes (torchrun, through Dagster Pipes); batch_size is per process
    nproc_per_node: int = 1

    def overrides(self) -> dict:
        """The fields to override: the typed ones that are set, then ``overrides_json``'s."""
        # lists (the launchpad's form of a tuple, e.g. patch) become the tuples the dataclasses hold
        typed = {k: tuple(v) if isinstance(v, list) else v for k, v in self.model_dump().items()
                 if k in TYPED_OVERRIDES and v is not None}
        try:
            extra = json.loads(self.overrides_json)
        except json.JSONDecodeError as exc:
            raise dg.Failure(f"overrides_json is not valid JSON ({exc}); give an object such as "
                             '{"dropout": 0.1}') from exc
        if not isinstance(extra, dict):
            raise dg.Failure(f"overrides_json must be a JSON object, got {self.overrides_json!r}")
        both = sorted(set(typed) & set(extra))
        if both:
            raise dg.Failure(f"{both} set both as config fields and in overrides_json; set each once")
        return {**typed, **extra}

    def preset_for(self, resolution_mm: int) -> str:
        """The preset by name, or for ``auto`` the one of the cohort's grid (:data:`PRESET_BY_RESOLUTION`)."""
        return PRESET_BY_RESOLUTION[resolution_mm] if self.preset == "auto" else self.preset

    def resolved(self, resolution_mm: int):
        return preset(self.preset_for(resolution_mm), **self.overrides())


# ``preset: auto``: the paper's model on UK Biobank's 1 mm grid, the demo model on the 2 mm grid.
PRESET_BY_RESOLUTION = {1: "paper", 2: "demo"}


def check_model_fits(cohort: str, model_cfg, preset_name: str, cached_shapes: set[str]) -> None:
    """Refuse, before any work, a model whose input shape is not the cohort's preprocessed volume.

    Raises
    ------
    dagster.Failure
        Naming both shapes and the fix (the grid's preset, or matching volume_shape / patch).
    """
    want = "x".join(map(str, model_cfg.volume_shape))
    if not cached_shapes:
        raise dg.Failure(f"cohort {cohort} has no preprocessed scan; materialize preprocessed_scans first")
    if cached_shapes != {want}:
        found = ", ".join(sorted(cached_shapes))
        by_grid = ", ".join(f"{mm} mm -> {name}" for mm, name in PRESET_BY_RESOLUTION.items())
        raise dg.Failure(f"cohort {cohort}: the model (preset {preset_name!r}) takes {want} volumes, but the "
                         f"cohort's preprocessed scans are {found}. Use the preset of the cohort's grid ({by_grid}; "
                         "preset 'auto' picks it), or set volume_shape to the scans' shape with a patch that "
                         "divides it (preprocessed_scans pads to its own patch)")


TYPED_OVERRIDES = ("epochs", "checkpoint_every", "batch_size", "lr", "lr_step_epochs", "enc_dim", "enc_depth",
                    "enc_heads", "dec_dim", "dec_depth", "dec_heads", "patch")


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; an explicit 'cuda' without one is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise dg.Failure(f"device {name!r} was asked for but torch sees no CUDA device; use 'cpu' or 'auto'")
    return name


# Fields a run may change and still resume (as train_model allows): more epochs continue the same run.
_RESUMABLE_FIELDS = ("epochs", "checkpoint_every", "checkpoint_every_steps", "num_workers")


def training_run_id(cohort: str, model_cfg, train_cfg, world_size: int = 1) -> str:
    """A stable id of (cohort, resolved configuration, processes): the same config resumes the same run.

    The number of DDP processes is part of it (each trains ``batch_size`` scans per step, and exact
    resume needs the same number); a single-process run's id is as it always was.
    """
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in _RESUMABLE_FIELDS}
    run = {"cohort": cohort, "model": model_cfg.to_dict(), "train": train}
    blob = json.dumps(run if world_size == 1 else {**run, "world_size": world_size}, sort_keys=True)
    return f"{cohort}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def split_scans(home: UdipHome, cohort: str, splits: tuple[str, ...]) -> pd.DataFrame:
    """Preprocessed scans of ``cohort`` in ``splits`` (failed ones left out): subject_id, visit, split, cache_path."""
    marks = ", ".join("?" for _ in splits)
    return home.query(f"SELECT subject_id, visit, split, cache_path FROM preprocessed_scans "
                      f"WHERE cohort = ? AND status = 'ok' AND split IN ({marks}) ORDER BY subject_id",
                      [cohort, *splits])


class _Recorder(TrainCallback):
    """Training callback: per-epoch metrics to MLflow and the run log (the tables come from the result)."""

    def __init__(self, tracked, log) -> None:
        self.tracked, self.log = tracked, log

    def log_metrics(self, m) -> None:
        metrics = {"train_loss": m.train_loss, "val_loss": m.val_loss, "lr": m.lr, "seconds": m.seconds,
                   "scans_per_s": m.scans_per_s}
        self.tracked.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=m.epoch)

    def on_epoch_end(self, m) -> None:
        self.log_metrics(m)
        self.log.info(f"epoch {m.epoch}: train {m.train_loss:.4f} val {m.val_loss:.4f} lr {m.lr:.2e} "
                      f"{m.scans_per_s:.1f} scans/s")


@dg.asset(partitions_def=cohort_partitions, group_name="model", deps=["preprocessed_scans"],
          kinds={"pytorch", "mlflow", "duckdb"}, io_manager_key=LINEAGE_IO, op_tags=step_tags(GPU_STEP))
def vit_ae_model(context: dg.AssetExecutionContext, config: ModelAssetConfig, home: UdipHome,
                 mlflow: MlflowTracking, compute: Compute) -> dg.Output[ModelRef]:
    """Train the ViT autoencoder on the cohort's train split, validating on its val split."""
    cohort = context.partition_key
    config = with_cohort_defaults(config, home, cohort, "vit_ae_model")
    resolution = load_cohort(home.cohort_dir(cohort)).resolution_mm
    preset_name = config.preset_for(resolution)
    model_cfg, train_cfg = config.resolved(resolution)
    cached = home.query("SELECT DISTINCT shape FROM preprocessed_scans WHERE cohort = ? AND status = 'ok'", [cohort])
    check_model_fits(cohort, model_cfg, preset_name, set(cached["shape"]))
    on_slurm = compute.resolved_backend() == "slurm"
    # on SLURM the job's node resolves 'auto' (and has the GPU this process may lack)
    device = config.device if on_slurm else resolve_device(config.device)
    if config.nproc_per_node < 1:
        raise dg.Failure(f"nproc_per_node must be >= 1, got {config.nproc_per_node}")
    run_id = training_run_id(cohort, model_cfg, train_cfg, world_size=config.nproc_per_node)
    scans = split_scans(home, cohort, ("train", "val"))
    train, val = scans[scans["split"] == "train"], scans[scans["split"] == "val"]
    if train.empty or val.empty:
        raise dg.Failure(f"cohort {cohort} has {len(train)} train and {len(val)} val scans; both are needed. "
                         "The paper's split fractions need about 150 kept subjects for a validation scan; with "
                         "fewer, set subjects' train_count and val_count (udip materialize --train-count N "
                         "--val-count M)")
    out_dir = home.artifacts("models", cohort, run_id)
    context.log.info(f"training {run_id} on {device}: {len(train)} train / {len(val)} val scans -> {out_dir}")
    params = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "device": device,
              "n_train": len(train), "n_val": len(val)}
    tags = {"cohort": cohort, "preset": preset_name, "training_run": run_id, "dagster_run_id": context.run.run_id}
    with mlflow.start_run(run_id, params=params, tags=tags, resume_tag="training_run") as tracked:
        rec = _Recorder(tracked, context.log)
        if config.nproc_per_node > 1 or on_slurm:
            result = train_out_of_process(context, compute, config.nproc_per_node, model_cfg, train_cfg, train,
                                          val, out_dir, device)
            for epoch in result.history:  # rank 0 logged each epoch through Pipes as it ended
                rec.log_metrics(EpochMetrics(**epoch))
        else:
            result = train_model(model_cfg, train_cfg, train["cache_path"].tolist(), val["cache_path"].tolist(),
                                 out_dir, device=device, callbacks=[rec])
        figure = reconstruction_figure(load_checkpoint(result.best_path, device="cpu" if on_slurm else device).model,
                                       val["cache_path"].tolist()[:2], ["validation scan A", "validation scan B"],
                                       out_dir / "reconstruction.png")
        tracked.log_artifact(figure)
        tracked.log_artifact(result.best_path, "checkpoints")
        tracked.log_artifact(result.last_path, "checkpoints")
        mlflow_run = tracked.run_id
    _write_training_tables(home, cohort, run_id, result, mlflow_run, model_cfg, train_cfg)
    best_id = model_id_for(run_id, result.best_epoch)
    ref = ModelRef(cohort=cohort, model_id=best_id, run_id=run_id, n_dims=model_cfg.enc_dim)
    return dg.Output(ref, metadata={
        "training_run": run_id, "mlflow_run_id": mlflow_run, "device": device,
        "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "final_train_loss": result.final_train_loss, "final_val_loss": result.final_val_loss,
        "best_val_loss": result.best_val_loss, "checkpoint": dg.MetadataValue.path(str(result.best_path)),
        "reconstruction": inline_figure(figure, "validation reconstructions"), "n_train": len(train),
        "n_val": len(val), "mlflow_run": dg.MetadataValue.url(mlflow.run_url(mlflow_run)),
        **table_metadata(home, CHECKPOINTS, cohort=cohort, run_id=run_id)})


def train_out_of_process(context: dg.AssetExecutionContext, compute: Compute, nproc: int, model_cfg, train_cfg,
                         train: pd.DataFrame, val: pd.DataFrame, out_dir: Path, device: str):
    """Train in the worker's ``train`` task, reporting through Dagster Pipes: ``torchrun`` with ``nproc``
    DDP processes here, or a SLURM job (torchrun inside it when ``nproc`` > 1) under ``compute=slurm``.

    Every rank reads the run's spec (configs, scan lists, folder, device) from a JSON file in
    ``out_dir``; rank 0 writes the checkpoints, logs each epoch to the run's event log as it ends
    and reports the :class:`~udip_assets.model.train.TrainResult`. A run stopped part-way resumes
    from ``last.pt`` like a single-process one (with the same number of processes).
    """
    import sys

    from udip_assets.model.train import TrainResult

    spec = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "train_paths": train["cache_path"].tolist(),
            "val_paths": val["cache_path"].tolist(), "out_dir": str(out_dir), "device": device}
    spec_path = write_text_atomic(out_dir / "torchrun_spec.json", json.dumps(spec, indent=1))
    worker = ["-m", "udip_assets.cluster.worker", "train"]
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else []
    env = {"UDIP_TRAIN_SPEC": str(spec_path)}
    if compute.resolved_backend() == "slurm":
        done = compute.run_job(context, "train", [*launcher, *worker], job_dir=out_dir / "job",
                               job_name=f"udip-train-{out_dir.name}"[:60], env=env)
        where = None
    else:
        threads = max(1, (os.cpu_count() or 1) // nproc)
        context.log.info(f"torchrun: {nproc} processes x {threads} thread(s) on {device}")
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(threads))
        done = dg.PipesSubprocessClient(env=env).run(context=context, command=[sys.executable, *launcher, *worker])
        where = f"torchrun ({nproc} processes; see the run's stderr log)"
    return TrainResult.from_json(task_report(done, "train", where))


def _write_training_tables(home, cohort, run_id, result, mlflow_run, model_cfg, train_cfg) -> None:
    """``training_epochs`` from the run's whole history; ``checkpoints`` for every saved epoch file."""
    part = {"cohort": cohort, "run_id": run_id}
    history = pd.DataFrame(result.history)
    home.write(TRAINING_EPOCHS, history.assign(**part)[[c for c in TRAINING_EPOCHS.column_names
                                                        if c in history.columns or c in part]], **part)
    cfg_json = json.dumps({"model": model_cfg.to_dict(), "train": train_cfg.to_dict()})
    saved = dict(result.checkpoints)
    if result.best_epoch is not None and result.best_epoch not in saved and result.best_path is not None:
        # best.pt is overwritten when the run is extended: keep this epoch's weights under their own name.
        keep = result.best_path.with_name(epoch_checkpoint_name(result.best_epoch))
        shutil.copyfile(result.best_path, keep)
        saved[result.best_epoch] = keep
    val_by_epoch = dict(zip(history["epoch"], history["val_loss"], strict=True)) if len(history) else {}
    rows = [{"model_id": model_id_for(run_id, epoch), "epoch": epoch, "path": str(path), "mlflow_run_id": mlflow_run,
             "val_loss": val_by_epoch.get(epoch), "is_best": epoch == result.best_epoch,
             "n_dims": model_cfg.enc_dim, "config_json": cfg_json,
             "created_at": datetime.now(UTC).replace(tzinfo=None)}
            for epoch, path in sorted(saved.items())]
    home.write(CHECKPOINTS, pd.DataFrame(rows).assign(**part), **part)


def encode_scans(checkpoint: str, scans: pd.DataFrame, *, batch_size: int, device: str) -> pd.DataFrame:
    """UDIP rows (``udips`` columns less cohort/model_id) of ``scans`` (from :func:`split_scans`)."""
    udips = extract_udips(checkpoint, scans["cache_path"].tolist(), scans["subject_id"].tolist(),
                          batch_size=batch_size, device=device)
    return _udip_rows(udips, scans)


def _udip_rows(udips: pd.DataFrame, scans: pd.DataFrame) -> pd.DataFrame:
    rows = udips.merge(scans[["subject_id", "visit", "split"]], on="subject_id", how="left")
    return rows.assign(n_dims=len(model_udip_columns(udips)))


def encode_scans_on(compute: Compute, context: dg.AssetExecutionContext, job_dir: Path, checkpoint: str,
                    scans: pd.DataFrame, *, batch_size: int, device: str) -> pd.DataFrame:
    """:func:`encode_scans` here, or as a SLURM job under ``compute=slurm`` (the worker's ``encode``
    task: the scan list in, a Parquet of UDIPs out, both in ``job_dir``; ``device`` 'auto' is
    resolved on the node)."""
    if compute.resolved_backend() != "slurm":
        return encode_scans(checkpoint, scans, batch_size=batch_size, device=resolve_device(device))
    from udip_assets.atomic import atomic_path

    inputs, out = job_dir / "scans.parquet", job_dir / "udips.parquet"
    with atomic_path(inputs) as tmp:
        scans[["subject_id", "visit", "split", "cache_path"]].to_parquet(tmp, index=False)
    out.unlink(missing_ok=True)  # a file from an earlier job is never taken for this one's
    done = compute.run_job(context, "encode", ["-m", "udip_assets.cluster.worker", "encode"],
                           job_dir=job_dir / "job", job_name=f"udip-encode-{job_dir.parent.name}"[:60],
                           extras={"checkpoint": str(checkpoint), "scans": str(inputs), "out": str(out),
                                   "batch_size": batch_size, "device": device})
    task_report(done, "encode")  # a job that wrote no report wrote no trusted file
    return _udip_rows(pd.read_parquet(out), scans)


def stored_udips(home: UdipHome, table: str, cohort: str, model_id: str, subject_ids) -> pd.DataFrame | None:
    """The rows of ``table`` for (cohort, model_id) when they cover every one of ``subject_ids``, else None."""
    if not home.has_table(table):
        return None  # a fresh warehouse: the table is created by its first write
    done = home.query(f"SELECT * FROM {table} WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    wanted = set(subject_ids)
    if not wanted <= set(done["subject_id"]):
        return None
    return done[done["subject_id"].isin(wanted)].drop(columns=["cohort", "model_id"])


class EmbeddingConfig(dg.Config):
    """Which checkpoint encodes the cohort: the loci sweep's choice (default), a model_id, another
    cohort's selected model (``model_cohort``: encode this cohort with a model trained elsewhere), or
    a registered MLflow model (``model_uri``, e.g. ``models:/udip-vit-ae@selected-demo``), loaded
    from the registry's artifact store."""

    model_id: str | None = None
    model_cohort: str | None = None
    model_uri: str | None = None
    splits: list[str] = ["inference"]
    batch_size: int = 4
    device: str = "auto"


def _registered_checkpoint(mlflow: MlflowTracking, uri: str) -> dict:
    """``model_id``, ``run_id`` and the checkpoint ``path`` of a registered model version."""
    from udip_assets.model.registry import checkpoint_of, registered_tags

    try:
        tags = registered_tags(mlflow.resolved_uri(), uri)
        path = checkpoint_of(mlflow.resolved_uri(), uri)
    except Exception as exc:  # MLflow raises its own types for a missing model, alias or version
        raise dg.Failure(f"model_uri {uri!r} cannot be loaded from {mlflow.resolved_uri()} ({exc}); see the "
                         "registered models in `make mlflow-ui`, or materialize checkpoint_loci_sweep") from exc
    return {"model_id": tags["model_id"], "run_id": tags.get("training_run", ""), "path": str(path)}


def checkpoint_row(home: UdipHome, model_id: str) -> pd.Series:
    """The ``checkpoints`` row of ``model_id``."""
    ck = home.query("SELECT * FROM checkpoints WHERE model_id = ?", [model_id])
    if ck.empty:
        raise dg.Failure(f"no checkpoint with model_id {model_id!r}; see `udip sql 'select * from checkpoints'`")
    return ck.iloc[0]


def choose_model(context, home: UdipHome, config: EmbeddingConfig, trained: ModelRef | None,
                 selected: ModelRef | None) -> tuple[str, str]:
    """(model_id, why) for ``udip_embeddings``: config, else the sweep's selection, else the best val loss."""
    if config.model_id:
        return config.model_id, "config model_id"
    if config.model_cohort:
        chosen = (home.query("SELECT model_id FROM model_selection WHERE cohort = ? AND selected",
                             [config.model_cohort]) if home.has_table("model_selection") else pd.DataFrame())
        if chosen.empty:
            raise dg.Failure(f"cohort {config.model_cohort} has no selected model; materialize its "
                             "checkpoint_loci_sweep first, or give model_id")
        return str(chosen["model_id"].iloc[0]), f"selected for cohort {config.model_cohort}"
    if selected is not None:
        if trained is not None and trained.run_id != selected.run_id:
            context.log.warning(f"the loci sweep chose among run {selected.run_id}'s checkpoints but the latest "
                                f"training run is {trained.run_id}; materialize checkpoint_loci_sweep to choose "
                                "among the new run's")
        return selected.model_id, "most loci (checkpoint_loci_sweep)"
    if trained is None:
        raise dg.Failure("neither vit_ae_model nor checkpoint_loci_sweep has been materialized for this cohort; "
                         "materialize them first, or give model_id")
    context.log.warning(f"no loci sweep for run {trained.run_id}: encoding with its lowest validation loss "
                        f"checkpoint {trained.model_id}; materialize checkpoint_loci_sweep to select by loci")
    return trained.model_id, "lowest validation loss (no loci sweep)"


@dg.asset(partitions_def=cohort_partitions, group_name="model", deps=["preprocessed_scans"],
          ins={"trained": dg.AssetIn("vit_ae_model", metadata=OPTIONAL),
               "selected": dg.AssetIn("checkpoint_loci_sweep", metadata=OPTIONAL)},
          kinds={"pytorch", "duckdb"}, io_manager_key=LINEAGE_IO, op_tags=step_tags(GPU_STEP))
def udip_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, home: UdipHome,
                    mlflow: MlflowTracking, compute: Compute, trained: ModelRef | None,
                    selected: ModelRef | None) -> dg.Output[ModelRef]:
    """Encode every GWAS-split scan with the selected model: its UDIPs and reconstruction loss per subject."""
    cohort = context.partition_key
    config = with_cohort_defaults(config, home, cohort, "udip_embeddings")
    if config.model_uri:
        ck = _registered_checkpoint(mlflow, config.model_uri)
        model_id, why = ck["model_id"], f"registered model {config.model_uri}"
    else:
        model_id, why = choose_model(context, home, config, trained, selected)
        ck = checkpoint_row(home, model_id)
    scans = split_scans(home, cohort, tuple(config.splits))
    if scans.empty:
        raise dg.Failure(f"cohort {cohort} has no preprocessed scans in splits {config.splits}")
    started = time.perf_counter()
    rows = stored_udips(home, SWEEP_UDIPS.name, cohort, model_id, scans["subject_id"])
    reused = rows is not None
    if reused:
        context.log.info(f"the loci sweep encoded all {len(rows)} scans with {model_id}; its UDIPs are reused")
    else:
        rows = encode_scans_on(compute, context, home.artifacts("encode", cohort, model_id), ck["path"], scans,
                               batch_size=config.batch_size, device=config.device)
    n_dims = len(model_udip_columns(rows))
    home.write(udips_table(n_dims), rows.assign(cohort=cohort, model_id=model_id), cohort=cohort, model_id=model_id)
    seconds = time.perf_counter() - started
    ref = ModelRef(cohort=cohort, model_id=model_id, run_id=str(ck["run_id"]), n_dims=n_dims)
    return dg.Output(ref, metadata={
        "chosen_by": why, "checkpoint": dg.MetadataValue.path(ck["path"]), "n_subjects": len(rows),
        "reused": reused, "n_dims": n_dims, "seconds_per_scan": seconds / max(len(rows), 1),
        "mean_recon_loss": float(rows["recon_loss"].mean()),
        **table_metadata(home, udips_table(n_dims), cohort=cohort, model_id=model_id)})


@dg.asset(partitions_def=cohort_partitions, group_name="model", ins={"embedded": dg.AssetIn("udip_embeddings")},
          kinds={"duckdb"})
def reconstruction_qc(context: dg.AssetExecutionContext, home: UdipHome, embedded: ModelRef) -> dg.MaterializeResult:
    """Reconstruction loss (3-IQR extreme outliers, figures), UDIP violins, UDIP spread and how much of the
    subjects' departures from the cohort mean the decoder reproduces (``udip_spectrum``)."""
    cohort, model_id = context.partition_key, embedded.model_id
    udips = home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ? ORDER BY subject_id", [cohort, model_id])
    losses = udips.set_index("subject_id")["recon_loss"]
    summary, is_outlier = extreme_outliers(losses)
    matrix = udips[model_udip_columns(udips)].to_numpy("float64")
    spectrum = effective_rank(matrix)
    spread = _decoder_spread(home, cohort, model_id)
    spread_row = dict.fromkeys(("decoder_n_subjects", "input_between_variance", "recon_between_variance",
                                "deviation_r2"))
    if spread is None:
        context.log.warning("fewer than 2 preprocessed GWAS-set scans: the decoder spread is not measured")
    else:
        context.log.info(f"decoder reproduces {spread.deviation_r2:.1%} of {spread.n_subjects} GWAS-set subjects' "
                         f"departures from the cohort mean (between-subject variance: inputs "
                         f"{spread.input_variance:.4f}, reconstructions {spread.recon_variance:.4f})")
        spread_row.update(decoder_n_subjects=spread.n_subjects, input_between_variance=spread.input_variance,
                          recon_between_variance=spread.recon_variance, deviation_r2=spread.deviation_r2)
    home.write(UDIP_SPECTRUM, pd.DataFrame([{**asdict(spectrum), "explained": json.dumps(list(spectrum.explained)),
                                             **spread_row, "computed_at": datetime.now(UTC).replace(tzinfo=None)}]),
               cohort=cohort, model_id=model_id)
    out = home.artifacts("qc", cohort, model_id)
    loss_png = loss_figure(losses, summary, out / "reconstruction_loss.png")
    violin_png = udip_violin_figure(matrix, out / "udip_violins.png")
    outliers = losses[is_outlier].sort_values(ascending=False)
    if len(outliers):
        context.log.warning(f"{len(outliers)} subjects have an extreme reconstruction loss (outside "
                            f"[{summary.lower_fence:.4f}, {summary.upper_fence:.4f}]); list them with: udip sql "
                            f"\"SELECT subject_id, recon_loss FROM udips WHERE cohort = '{cohort}' AND model_id = "
                            f"'{model_id}' AND recon_loss NOT BETWEEN {summary.lower_fence:.6g} AND "
                            f"{summary.upper_fence:.6g} ORDER BY 2 DESC\"")
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "n_subjects": summary.n_scans, "median_loss": summary.median,
        "q1": summary.q1, "q3": summary.q3, "n_extreme_outliers": summary.n_outliers,
        "participation_ratio": spectrum.participation_ratio, "n_pcs_90": spectrum.n_pcs_90,
        "n_pcs_99": spectrum.n_pcs_99, "pc1_fraction": spectrum.pc1_fraction,
        **{k: v for k, v in spread_row.items() if v is not None},
        "outlier_losses": dg.MetadataValue.json([round(float(v), 6) for v in outliers]),
        "loss_figure": inline_figure(loss_png, "reconstruction loss"),
        "udip_violins": inline_figure(violin_png, "UDIP violins")})


def _decoder_spread(home: UdipHome, cohort: str, model_id: str):
    """:class:`~udip_assets.interpret.qc.DecoderSpread` of the first DECODER_SPREAD_SCANS GWAS-set scans (None
    with fewer than 2)."""
    from udip_assets.imaging.anatomy import load_anatomy
    from udip_assets.imaging.preprocess import pad_to_patch_multiple

    scans = split_scans(home, cohort, ("inference",)).head(DECODER_SPREAD_SCANS)
    if len(scans) < 2:
        return None
    net = load_checkpoint(checkpoint_row(home, model_id)["path"], device="cpu").model
    mask = pad_to_patch_multiple(load_anatomy(load_cohort(home.cohort_dir(cohort)).grid).brain_mask, net.cfg.patch)
    acc = DecoderSpreadAccumulator(mask)
    # the decoder's own prediction: masked with each input's brain, the reconstructions would vary
    # between subjects with their brain outlines even from a decoder that ignores its code
    for original, recon in iter_reconstructions(net, scans["cache_path"], mask_background=False):
        acc.update(original, recon)
    return acc.result()


# Scans reconstructed for the decoder-spread QC: ~3 s at the demo geometry on 2 cores, ~10 s at 1 mm.
DECODER_SPREAD_SCANS = 32

model_assets = [vit_ae_model, udip_embeddings, reconstruction_qc]
