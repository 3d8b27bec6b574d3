"""The command a job runs: ``python -m udip_assets.cluster.worker <task>``, reporting through Dagster Pipes.

Each task works on files only (never the warehouse), logs through ``pipes.log`` (so its lines
reach the Dagster event log while it runs) and reports its summary as one custom message, which
the orchestrating step turns into its result and metadata.

- ``gwas``: one chromosome partition (:mod:`udip_assets.genetics.gwas_partition`); parameters in
  the Pipes extras.
- ``encode``: UDIP extraction of a list of scans under one checkpoint, to a Parquet file;
  parameters in the extras.
- ``perdi``: the PerDI maps of a model's chosen dims (NIfTI + PNG files) and their table rows.
- ``train``: ViT-AE training, on one process or as every rank of ``torchrun``, here or in a SLURM
  job; parameters in the JSON file ``$UDIP_TRAIN_SPEC`` (every rank reads it). Only rank 0 opens
  Pipes, logs and reports; the other ranks train their share and exit.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from dagster_pipes import open_dagster_pipes


def _device(name: str) -> str:
    """'auto' resolved here, on the node that runs the task (a SLURM job's may have the GPU)."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _gwas(pipes) -> dict:
    from udip_assets.genetics.gwas_partition import run_partition

    extras = pipes.extras
    return run_partition(extras["out"], extras["genotypes"], str(extras["chrom"]), log=pipes.log.info)


def _encode(pipes) -> dict:
    """UDIPs of the scans in ``extras['scans']`` (Parquet: subject_id, visit, split, cache_path) under
    ``extras['checkpoint']``, written atomically to ``extras['out']``."""
    import pandas as pd

    from udip_assets.atomic import atomic_path
    from udip_assets.model.extract import extract_udips

    extras = pipes.extras
    device = _device(extras["device"])
    scans = pd.read_parquet(extras["scans"])
    pipes.log.info(f"encoding {len(scans)} scans on {device} with {extras['checkpoint']}")
    udips = extract_udips(extras["checkpoint"], scans["cache_path"].tolist(), scans["subject_id"].tolist(),
                          batch_size=int(extras["batch_size"]), device=device, show_progress=False)
    with atomic_path(extras["out"]) as tmp:
        udips.to_parquet(tmp, index=False)
    return {"n_scans": len(udips), "device": device, "out": extras["out"]}


def _perdi(pipes) -> dict:
    """PerDI maps of ``extras['dims']`` (files into ``extras['out']``) and their ``perdi_dims`` rows."""
    import numpy as np

    from udip_assets.cohort.spec import load_cohort
    from udip_assets.interpret.perdi_run import write_perdi_maps

    extras = pipes.extras
    device = _device(extras["device"])
    rows, info = write_perdi_maps(extras["checkpoint"], np.load(extras["udips"]), extras["dims"], extras["reason"],
                                  load_cohort(Path(extras["cohort_dir"])).grid, Path(extras["out"]),
                                  n_subjects=int(extras["n_subjects"]), sigma=float(extras["sigma"]),
                                  batch_size=int(extras["batch_size"]), device=device, log=pipes.log.info)
    return {"rows": rows, "info": info}


def _train(log) -> dict:
    from udip_assets.model.config import ModelConfig, TrainConfig
    from udip_assets.model.train import TrainCallback, train_model

    spec = json.loads(Path(os.environ["UDIP_TRAIN_SPEC"]).read_text())

    class Report(TrainCallback):
        def on_epoch_end(self, m) -> None:
            if log is not None:
                log(f"epoch {m.epoch}: train {m.train_loss:.4f} val {m.val_loss:.4f} lr {m.lr:.2e} "
                    f"{m.scans_per_s:.1f} scans/s")

    device = _device(spec["device"])
    result = train_model(ModelConfig.from_dict(spec["model"]), TrainConfig.from_dict(spec["train"]),
                         spec["train_paths"], spec["val_paths"], spec["out_dir"], device=device,
                         callbacks=[Report()], show_progress=False)
    return result.to_json()


TASKS = {"gwas": _gwas, "encode": _encode, "perdi": _perdi, "train": _train}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in TASKS:
        print(f"usage: python -m udip_assets.cluster.worker {{{','.join(TASKS)}}}", file=sys.stderr)
        return 2
    task = argv[0]
    if task == "train" and int(os.environ.get("RANK", "0")) != 0:
        _train(log=None)  # a torchrun rank other than 0: trains, reports nothing
        return 0
    with open_dagster_pipes() as pipes:
        summary = _train(log=pipes.log.info) if task == "train" else TASKS[task](pipes)
        pipes.report_custom_message({"task": task, "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
