"""The `train` stage (global step, upstream merge): the Panoptic Cascade Mask R-CNN learns the pseudo-labels.

Writes under RUN/train/: job.json (what every training process runs), checkpoints/iter-NNNNNNN.pt (resumable
state), progress.json, loss.json, loss.png, result.json and model_final.pth (outputs["checkpoint"], read by
the predict stage). K and S come from the run (cluster.k, stego.n_classes). A finished training of the same
identity (train config + model + merge manifest) is reused, e.g. one that a SLURM job ran
(`train.launcher: external`, deploy/train_slurm.sbatch).
"""

from __future__ import annotations

import time

import numpy as np

from .. import storage
from ..config import PipelineConfig
from ..manifest import GlobalResult
from ..rundir import RunDir
from .dataset import build_index
from .launch import TrainJob, default_processes, launch, result_url

STAGE = "train"
FINAL_WINDOW = 20  # iterations the final loss values are averaged over


def train_job(run: RunDir, cfg: PipelineConfig) -> TrainJob:
    """The job of this run's training (identity = train config, model with the run's K and S, merge manifest)."""
    model = cfg.train.model.with_classes(cfg.cluster.k, cfg.stego.n_classes)
    identity = storage.hash_json([cfg.train.config_hash(), model.config_hash(), run.stage_manifest("merge").hash])
    return TrainJob(run.root, run.url(STAGE), cfg.train, model, identity)


def finished_result(job: TrainJob) -> dict | None:
    """result.json of a finished training of this identity whose final model exists, else None."""
    url = result_url(job.out_dir)
    if not storage.exists(url):
        return None
    result = storage.read_json(url)
    done = result.get("identity") == job.identity and storage.exists(result["final_checkpoint"])
    return result if done else None


def train_stage(run: RunDir, cfg: PipelineConfig) -> GlobalResult:
    """Train (or resume, or reuse a finished training) and summarise it."""
    start = time.perf_counter()
    job = train_job(run, cfg)
    index, held_out = build_index(run, cfg.train.data.holdout_fraction)
    storage.write_json(run.url(STAGE, "job.json"), job.to_json())
    result = finished_result(job)
    processes = default_processes(cfg.train)
    if result is None:
        if cfg.train.launcher == "external":
            raise RuntimeError(
                f"train.launcher is 'external': submit the job ({run.url(STAGE, 'job.json')}), e.g. "
                "`sbatch deploy/train_slurm.sbatch <that file>`, then re-run this stage"
            )
        result = launch(job, processes)
    history = storage.read_json(run.url(STAGE, "loss.json"))
    tail = history[-FINAL_WINDOW:]
    final = {k: float(np.mean([row[k] for row in tail])) for k in tail[0] if k.startswith("loss_") or k == "total"}
    return GlobalResult(
        stage=STAGE,
        outputs={"checkpoint": run.rel(result["final_checkpoint"]), "loss_curves": f"{STAGE}/loss.png",
                 "loss_history": f"{STAGE}/loss.json"},
        summary={"iterations": result["iterations"], "n_train_images": len(index), "n_held_out": held_out,
                 "num_things": job.model.num_things, "num_stuff": job.model.num_stuff},
        metrics={"final_losses": final, "first_total_loss": history[0]["total"], "processes": processes,
                 "iters_per_second": result["iters_per_second"], "resumed_from": result["resumed_from"]},
        seconds=time.perf_counter() - start,
    )
