"""Starting a training job in one process or as N DDP processes (NCCL on GPU, gloo on CPU).

* `launch(job, processes)`: the train stage's way: 1 process runs here; N are spawned on this machine
  (torchrun-style: rank, world size, a free local port), one per GPU.
* `python -m u2seg_core.train.launch JOB_JSON`: one process of a job started by torchrun (RANK, WORLD_SIZE,
  LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by SLURM's srun (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID; the
  sbatch script exports MASTER_ADDR / MASTER_PORT): deploy/train_slurm.sbatch runs it on several nodes.

Process 0 writes `result.json` next to the checkpoints; `launch` reads it back.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist

from .. import storage
from ..config import TrainConfig
from ..model.config import ModelConfig
from ..rundir import RunDir
from .dataset import MergeDataset, build_index
from .loop import DistContext, TrainResult, train_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainJob:
    """Everything a training process needs, JSON-serialisable (`job.json`)."""

    run_root: str
    out_dir: str
    train: TrainConfig
    model: ModelConfig
    identity: str

    def to_json(self) -> dict:
        return {"run_root": self.run_root, "out_dir": self.out_dir, "identity": self.identity,
                "train": self.train.model_dump(mode="json"), "model": self.model.model_dump(mode="json")}

    @classmethod
    def from_json(cls, data: dict) -> "TrainJob":
        return cls(data["run_root"], data["out_dir"], TrainConfig.model_validate(data["train"]),
                   ModelConfig.model_validate(data["model"]), data["identity"])


def result_url(out_dir: str) -> str:
    return storage.join(out_dir, "result.json")


def run_process(job: TrainJob, ctx: DistContext) -> TrainResult:
    """One process of the job: index + dataset from the run directory, then the training loop."""
    index, _ = build_index(RunDir(job.run_root), job.train.data.holdout_fraction)
    dataset = MergeDataset(RunDir(job.run_root), index, job.model.input, job.train.data.shard_cache)
    result = train_model(dataset, job.train, job.model, job.out_dir, job.identity, ctx)
    if ctx.is_main:
        summary = {k: v for k, v in asdict(result).items() if k != "history"}
        storage.write_json(result_url(job.out_dir), {**summary, "identity": job.identity})
    return result


def _backend(job: TrainJob) -> str:
    uses_cuda = job.train.device == "cuda" or (job.train.device == "auto" and torch.cuda.is_available())
    return "nccl" if uses_cuda else "gloo"


def _worker(rank: int, job_json: dict, world_size: int, port: int) -> None:
    job = TrainJob.from_json(job_json)
    if _backend(job) == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(_backend(job), init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        run_process(job, DistContext(rank=rank, world_size=world_size, local_rank=rank))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_processes(cfg: TrainConfig) -> int:
    """`train.processes`, else one per visible GPU (1 on CPU)."""
    if cfg.processes is not None:
        return cfg.processes
    uses_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    return max(torch.cuda.device_count(), 1) if uses_cuda else 1


def launch(job: TrainJob, processes: int) -> dict:
    """Run the job in `processes` processes on this machine; returns process 0's result.json."""
    if processes == 1:
        run_process(job, DistContext())
    else:
        if _backend(job) == "nccl" and processes > torch.cuda.device_count():
            raise ValueError(f"train.processes={processes} but only {torch.cuda.device_count()} GPUs are visible")
        torch.multiprocessing.start_processes(
            _worker, args=(job.to_json(), processes, _free_port()), nprocs=processes, start_method="spawn"
        )
    return storage.read_json(result_url(job.out_dir))


def context_from_env() -> DistContext:
    """Rank / world size / local rank from torchrun's or SLURM's environment (single process when neither)."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistContext(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        return DistContext(int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env.get("SLURM_LOCALID", 0)))
    return DistContext()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one process of a u2seg training job (torchrun / srun)")
    parser.add_argument("job", help="RUN/train/job.json, written by the train stage")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    job = TrainJob.from_json(storage.read_json(args.job))
    ctx = context_from_env()
    if ctx.distributed:
        if _backend(job) == "nccl":
            torch.cuda.set_device(ctx.local_rank)
        dist.init_process_group(_backend(job), rank=ctx.rank, world_size=ctx.world_size)  # env:// rendezvous
    try:
        run_process(job, ctx)
    finally:
        if ctx.distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
