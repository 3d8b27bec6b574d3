"""Model assets: train the ViT-AE (tracked in MLflow), encode scans into UDIPs, reconstruction QC.

``vit_ae_model`` trains on a cohort's train/val split; its training id is a hash of the resolved
configuration and the cohort, so re-materializing the same configuration resumes (or reuses) the
run's checkpoints instead of starting over. ``udip_embeddings`` encodes the inference split with a
chosen checkpoint (``model_id``) and ``reconstruction_qc`` summarises the per-scan losses.
"""

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from datetime import UTC, datetime

import dagster as dg
import pandas as pd

from udip_assets.defs.partitions import cohort_partitions
from udip_assets.defs.resources import UdipHome, latest_model_id
from udip_assets.defs.tracking import MlflowTracking
from udip_assets.interpret.qc import effective_rank, extreme_outliers, loss_figure, udip_violin_figure
from udip_assets.model.checkpoint import epoch_checkpoint_name, load_checkpoint, model_id_for
from udip_assets.model.config import preset
from udip_assets.model.extract import extract_udips, reconstruction_figure
from udip_assets.model.train import TrainCallback, train_model
from udip_assets.store.schema import CHECKPOINTS, TRAINING_EPOCHS, UDIP_COLUMNS, UDIP_SPECTRUM, UDIPS


class ModelAssetConfig(dg.Config):
    """The preset and any field of ModelConfig / TrainConfig to override (JSON object)."""

    preset: str = "demo"
    overrides_json: str = "{}"
    device: str = "auto"

    def resolved(self):
        try:
            overrides = json.loads(self.overrides_json)
        except json.JSONDecodeError as exc:
            raise dg.Failure(f"overrides_json is not valid JSON ({exc}); give an object such as "
                             '{"epochs": 10, "enc_depth": 4}') from exc
        return preset(self.preset, **overrides)


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


def training_run_id(cohort: str, model_cfg, train_cfg) -> str:
    """A stable id of (cohort, resolved configuration): the same config resumes the same run."""
    train = {k: v for k, v in train_cfg.to_dict().items() if k not in _RESUMABLE_FIELDS}
    blob = json.dumps({"cohort": cohort, "model": model_cfg.to_dict(), "train": train}, sort_keys=True)
    return f"{cohort}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"


def split_scans(home: UdipHome, cohort: str, splits: tuple[str, ...]) -> pd.DataFrame:
    """Preprocessed scans of ``cohort`` in ``splits``: subject_id, visit, split, cache_path."""
    marks = ", ".join("?" for _ in splits)
    return home.query(f"SELECT subject_id, visit, split, cache_path FROM preprocessed_scans "
                      f"WHERE cohort = ? AND split IN ({marks}) ORDER BY subject_id", [cohort, *splits])


class _Recorder(TrainCallback):
    """Training callback: per-epoch metrics to MLflow and the run log (the tables come from the result)."""

    def __init__(self, tracked, log) -> None:
        self.tracked, self.log = tracked, log

    def on_epoch_end(self, m) -> None:
        metrics = {"train_loss": m.train_loss, "val_loss": m.val_loss, "lr": m.lr, "seconds": m.seconds,
                   "scans_per_s": m.scans_per_s}
        self.tracked.log_metrics({k: v for k, v in metrics.items() if v is not None}, step=m.epoch)
        self.log.info(f"epoch {m.epoch}: train {m.train_loss:.4f} val {m.val_loss:.4f} lr {m.lr:.2e} "
                      f"{m.scans_per_s:.1f} scans/s")


@dg.asset(partitions_def=cohort_partitions, group_name="model", deps=["preprocessed_scans"],
          kinds={"pytorch", "mlflow", "duckdb"})
def vit_ae_model(context: dg.AssetExecutionContext, config: ModelAssetConfig, home: UdipHome,
                 mlflow: MlflowTracking) -> dg.MaterializeResult:
    """Train the ViT autoencoder on the cohort's train split, validating on its val split."""
    cohort = context.partition_key
    model_cfg, train_cfg = config.resolved()
    device = resolve_device(config.device)
    run_id = training_run_id(cohort, model_cfg, train_cfg)
    scans = split_scans(home, cohort, ("train", "val"))
    train, val = scans[scans["split"] == "train"], scans[scans["split"] == "val"]
    if train.empty or val.empty:
        raise dg.Failure(f"cohort {cohort} has {len(train)} train and {len(val)} val scans; both are needed")
    out_dir = home.artifacts("models", cohort, run_id)
    context.log.info(f"training {run_id} on {device}: {len(train)} train / {len(val)} val scans -> {out_dir}")
    params = {"model": model_cfg.to_dict(), "train": train_cfg.to_dict(), "device": device,
              "n_train": len(train), "n_val": len(val)}
    with mlflow.start_run(run_id, params=params, tags={"cohort": cohort, "preset": config.preset,
                                                        "training_run": run_id}) as tracked:
        rec = _Recorder(tracked, context.log)
        result = train_model(model_cfg, train_cfg, train["cache_path"].tolist(), val["cache_path"].tolist(),
                             out_dir, device=device, callbacks=[rec])
        figure = reconstruction_figure(load_checkpoint(result.best_path, device=device).model,
                                       val["cache_path"].tolist()[:2], ["validation scan A", "validation scan B"],
                                       out_dir / "reconstruction.png")
        tracked.log_artifact(figure)
        tracked.log_artifact(result.best_path, "checkpoints")
        tracked.log_artifact(result.last_path, "checkpoints")
        mlflow_run = tracked.run_id
    _write_training_tables(home, cohort, run_id, result, mlflow_run, model_cfg, train_cfg)
    best_id = model_id_for(run_id, result.best_epoch)
    return dg.MaterializeResult(metadata={
        "model_id": best_id, "training_run": run_id, "mlflow_run_id": mlflow_run, "device": device,
        "epochs": result.epochs_run, "best_epoch": result.best_epoch,
        "final_train_loss": result.final_train_loss, "final_val_loss": result.final_val_loss,
        "best_val_loss": result.best_val_loss, "checkpoint": dg.MetadataValue.path(str(result.best_path)),
        "reconstruction": dg.MetadataValue.path(str(figure)), "n_train": len(train), "n_val": len(val)})


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
             "val_loss": val_by_epoch.get(epoch), "is_best": epoch == result.best_epoch, "config_json": cfg_json,
             "created_at": datetime.now(UTC).replace(tzinfo=None)}
            for epoch, path in sorted(saved.items())]
    home.write(CHECKPOINTS, pd.DataFrame(rows).assign(**part), **part)


def encode_scans(home: UdipHome, cohort: str, model_id: str, checkpoint: str, scans: pd.DataFrame, *,
                 batch_size: int, device: str) -> tuple[pd.DataFrame, bool]:
    """``udips`` rows of ``scans`` (from :func:`split_scans`) under ``model_id``: (rows, reused).

    Rows already in the warehouse for every scan are reused (the loci sweep and ``udip_embeddings``
    encode the same scans with the same checkpoint); otherwise the scans are encoded and the
    (cohort, model_id) partition of ``udips`` is replaced.
    """
    if not home.query("SELECT 1 FROM duckdb_tables() WHERE table_name = ?", [UDIPS.name]).empty:
        done = home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ?", [cohort, model_id])
    else:  # a fresh warehouse: the table is created by its first write
        done = pd.DataFrame(columns=["subject_id"])
    if set(scans["subject_id"]) <= set(done["subject_id"]):
        return done[done["subject_id"].isin(scans["subject_id"])], True
    udips = extract_udips(checkpoint, scans["cache_path"].tolist(), scans["subject_id"].tolist(),
                          batch_size=batch_size, device=device)
    rows = udips.merge(scans[["subject_id", "visit", "split"]], on="subject_id", how="left")
    home.write(UDIPS, rows.assign(cohort=cohort, model_id=model_id), cohort=cohort, model_id=model_id)
    return rows, False


class EmbeddingConfig(dg.Config):
    """Which checkpoint encodes the cohort: a model_id, or the cohort's selected/best one."""

    model_id: str | None = None
    model_cohort: str | None = None
    splits: list[str] = ["inference"]
    batch_size: int = 4
    device: str = "auto"


def choose_checkpoint(home: UdipHome, cohort: str, model_id: str | None) -> pd.Series:
    """The ``checkpoints`` row to encode with: ``model_id`` if given, else the loci-selected, else the best."""
    ck = home.query("SELECT * FROM checkpoints WHERE cohort = ? ORDER BY created_at DESC, epoch DESC", [cohort])
    if model_id:
        ck = home.query("SELECT * FROM checkpoints WHERE model_id = ?", [model_id])
        if ck.empty:
            raise dg.Failure(f"no checkpoint with model_id {model_id!r}; see `udip sql 'select * from checkpoints'`")
        return ck.iloc[0]
    if ck.empty:
        raise dg.Failure(f"cohort {cohort} has no trained checkpoints; materialize vit_ae_model first")
    latest = ck[ck["run_id"] == ck["run_id"].iloc[0]]
    if "selected" in latest.columns and latest["selected"].fillna(False).any():
        return latest[latest["selected"].fillna(False)].iloc[0]
    return latest[latest["is_best"]].iloc[0] if latest["is_best"].any() else latest.iloc[0]


@dg.asset(partitions_def=cohort_partitions, group_name="model",
          deps=[vit_ae_model, "preprocessed_scans", "checkpoint_loci_sweep"], kinds={"pytorch", "duckdb"})
def udip_embeddings(context: dg.AssetExecutionContext, config: EmbeddingConfig, home: UdipHome) -> dg.MaterializeResult:
    """Encode every inference-split scan: 128 UDIPs and the reconstruction loss per subject."""
    cohort = context.partition_key
    ck = choose_checkpoint(home, config.model_cohort or cohort, config.model_id)
    scans = split_scans(home, cohort, tuple(config.splits))
    if scans.empty:
        raise dg.Failure(f"cohort {cohort} has no preprocessed scans in splits {config.splits}")
    started = time.perf_counter()
    rows, reused = encode_scans(home, cohort, ck["model_id"], ck["path"], scans, batch_size=config.batch_size,
                                device=resolve_device(config.device))
    if reused:
        context.log.info(f"UDIPs of {ck['model_id']} for all {len(rows)} scans are in the warehouse; reused")
    seconds = time.perf_counter() - started
    return dg.MaterializeResult(metadata={
        "model_id": ck["model_id"], "checkpoint": dg.MetadataValue.path(ck["path"]), "n_subjects": len(rows),
        "reused": reused,
        "n_dims": sum(c in rows.columns for c in UDIP_COLUMNS), "seconds_per_scan": seconds / max(len(rows), 1),
        "mean_recon_loss": float(rows["recon_loss"].mean())})


@dg.asset(partitions_def=cohort_partitions, group_name="model", deps=[udip_embeddings], kinds={"duckdb"})
def reconstruction_qc(context: dg.AssetExecutionContext, home: UdipHome) -> dg.MaterializeResult:
    """Reconstruction loss (3-IQR extreme outliers, figures), UDIP violins, UDIP spread (``udip_spectrum``)."""
    cohort = context.partition_key
    model_id = latest_model_id(context, "udip_embeddings", cohort)
    udips = home.query("SELECT * FROM udips WHERE cohort = ? AND model_id = ? ORDER BY subject_id", [cohort, model_id])
    losses = udips.set_index("subject_id")["recon_loss"]
    summary, is_outlier = extreme_outliers(losses)
    # A model with enc_dim < 128 leaves the remaining udip_* columns NULL: they are not dimensions.
    matrix = udips[[c for c in UDIP_COLUMNS if c in udips.columns and udips[c].notna().any()]].to_numpy("float64")
    spectrum = effective_rank(matrix)
    home.write(UDIP_SPECTRUM, pd.DataFrame([{**asdict(spectrum), "explained": json.dumps(list(spectrum.explained)),
                                             "computed_at": datetime.now(UTC).replace(tzinfo=None)}]),
               cohort=cohort, model_id=model_id)
    out = home.artifacts("qc", cohort, model_id)
    loss_png = loss_figure(losses, summary, out / "reconstruction_loss.png")
    violin_png = udip_violin_figure(matrix, out / "udip_violins.png")
    outliers = losses[is_outlier].sort_values(ascending=False)
    for sid, loss in outliers.items():
        context.log.warning(f"subject {sid}: reconstruction loss {loss:.4f} is an extreme outlier "
                            f"(outside [{summary.lower_fence:.4f}, {summary.upper_fence:.4f}])")
    return dg.MaterializeResult(metadata={
        "model_id": model_id, "n_subjects": summary.n_scans, "median_loss": summary.median,
        "q1": summary.q1, "q3": summary.q3, "n_extreme_outliers": summary.n_outliers,
        "participation_ratio": spectrum.participation_ratio, "n_pcs_90": spectrum.n_pcs_90,
        "n_pcs_99": spectrum.n_pcs_99, "pc1_fraction": spectrum.pc1_fraction,
        "outliers": dg.MetadataValue.json({str(k): float(v) for k, v in outliers.items()}),
        "loss_figure": dg.MetadataValue.path(str(loss_png)), "udip_violins": dg.MetadataValue.path(str(violin_png))})


model_assets = [vit_ae_model, udip_embeddings, reconstruction_qc]
