"""The training loop of one process (one of N under DDP): resumable, deterministic on CPU.

Iteration i: this process's micro-batches of global batch i (sampler.py) -> `training_losses` -> backward
(gradients averaged over micro-batches and, by DDP, over processes) -> unscale (AMP) -> clip -> SGD step ->
LR schedule. Every `checkpoint_period` iterations and at the end process 0 writes the training state
(checkpoints.py); the final model goes to `model_final.pth` (the model checkpoint format of
`u2seg_core.model.checkpoint`), the loss history to `loss.json` / `loss.png`, progress to `progress.json`.

Test hook: `U2SEG_TRAIN_EXIT_AFTER=<iteration>` makes every process exit (status 70) right after the checkpoint
of that iteration is written, as a killed job would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from .. import storage
from ..config import TrainConfig
from ..model.checkpoint import load_backbone_init, save_checkpoint
from ..model.config import ModelConfig
from ..model.meta_arch import PanopticCascadeRCNN, build_model
from .checkpoints import checkpoint_url, latest_checkpoint, load_state, restore_rng_states, rng_states, save_state
from .curves import loss_curves_png
from .dataset import MergeDataset
from .forward import training_losses
from .sampler import GlobalBatches, RankBatches
from .solver import build_optimizer, build_scheduler, clip_gradients

log = logging.getLogger(__name__)
EXIT_ENV = "U2SEG_TRAIN_EXIT_AFTER"
LOG_PERIOD = 20


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job (torchrun / SLURM environment, or a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class TrainResult:
    """What one training produced (`final_checkpoint` is the model for the predict stage)."""

    iterations: int
    resumed_from: int
    final_checkpoint: str
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    iters_per_second: float = 0.0


class LossModule(nn.Module):
    """The model with `training_losses` as its forward, so DDP sees every parameter's gradient."""

    def __init__(self, model: PanopticCascadeRCNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, batched_inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return training_losses(self.model, batched_inputs)


def _as_list(examples: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return examples


def train_device(cfg: TrainConfig, ctx: DistContext) -> torch.device:
    """cuda:<local rank> when CUDA is asked for or available ('auto'), else the CPU."""
    wants_cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if wants_cuda and not torch.cuda.is_available():
        raise RuntimeError("train.device='cuda' but CUDA is not available; use train.device='cpu' or 'auto'")
    return torch.device("cuda", ctx.local_rank) if wants_cuda else torch.device("cpu")


def build_train_model(
    cfg: TrainConfig, model_cfg: ModelConfig, device: torch.device, ctx: DistContext
) -> PanopticCascadeRCNN:
    """Randomly initialised (seeded, identical on every process) model, DINO backbone init when given, SyncBN
    under multi-GPU DDP."""
    norms = {model_cfg.resnet.norm, model_cfg.fpn.norm}
    if ctx.distributed and device.type != "cuda" and "SyncBN" in norms:
        raise ValueError("SyncBN needs CUDA under DDP: on CPU set the model's resnet/fpn norm to 'BN' or 'GN'")
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg)
    if cfg.init_weights:
        load_backbone_init(model, cfg.init_weights)
    if ctx.distributed and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model.to(device).train()


def _mean_over_processes(values: torch.Tensor, ctx: DistContext) -> torch.Tensor:
    if ctx.distributed:
        dist.all_reduce(values)
        values /= ctx.world_size
    return values


def train_model(
    dataset: MergeDataset,
    cfg: TrainConfig,
    model_cfg: ModelConfig,
    out_dir: str,
    identity: str,
    ctx: DistContext = DistContext(),
) -> TrainResult:
    """Train (or resume) under `out_dir` (RUN/train); `identity` names the config + dataset so that only
    checkpoints of the same training are resumed (others are removed)."""
    from tqdm.auto import tqdm

    solver = cfg.solver
    device = train_device(cfg, ctx)
    model = build_train_model(cfg, model_cfg, device, ctx)
    optimizer = build_optimizer(model, solver)
    scheduler = build_scheduler(optimizer, solver)
    amp = solver.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    history: list[dict[str, float]] = []

    start = 0
    latest = latest_checkpoint(out_dir)
    if latest is not None:
        state = load_state(latest[1])
        if state["identity"] != identity:
            if ctx.is_main:
                log.warning("%s is of another training; removing the old checkpoints", latest[1])
                storage.remove(storage.join(out_dir, "checkpoints"), recursive=True)
        else:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            restore_rng_states(state["rng"], device)
            history = list(state["history"])
            start = int(state["iteration"])
            log.info("resuming from iteration %d (%s)", start, latest[1])
    if ctx.distributed:
        dist.barrier()

    wrapped: nn.Module = LossModule(model)
    if ctx.distributed:
        wrapped = nn.parallel.DistributedDataParallel(
            wrapped, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    sampler = RankBatches(
        GlobalBatches(dataset.index.aspect_group, solver.ims_per_batch, cfg.seed, cfg.data.aspect_ratio_grouping),
        ctx.rank, ctx.world_size, cfg.data.ims_per_device, start, solver.max_iter,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, num_workers=cfg.data.num_workers, collate_fn=_as_list,
        pin_memory=device.type == "cuda",
        # spawn: the stage may run in a threaded Prefect worker or hold CUDA, where fork is unsafe
        multiprocessing_context="spawn" if cfg.data.num_workers > 0 else None,
    )
    micro_batches = iter(loader)
    exit_after = os.environ.get(EXIT_ENV)

    def save(iteration: int) -> None:
        if ctx.is_main:
            save_state(
                checkpoint_url(out_dir, iteration),
                {"iteration": iteration, "identity": identity, "model": model.state_dict(),
                 "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                 "scaler": scaler.state_dict(), "rng": rng_states(device),
                 "sampler": {"seed": cfg.seed, "next_iteration": iteration}, "history": history},
            )
        if ctx.distributed:
            dist.barrier()
        if exit_after == str(iteration):
            os._exit(70)

    started = time.perf_counter()
    bar = tqdm(total=solver.max_iter, initial=start, desc="train", unit="it", disable=None if ctx.is_main else True)
    for iteration in range(start, solver.max_iter):
        optimizer.zero_grad(set_to_none=True)
        totals: dict[str, torch.Tensor] = {}
        for m in range(sampler.micro_per_iter):
            batch = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in x.items()}
                     for x in next(micro_batches)]
            last = m == sampler.micro_per_iter - 1
            sync = contextlib.nullcontext() if last or not ctx.distributed else wrapped.no_sync()
            with sync, torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                losses = wrapped(batch)
                loss = sum(losses.values()) / sampler.micro_per_iter
            scaler.scale(loss).backward()
            for k, v in losses.items():
                totals[k] = totals.get(k, 0.0) + v.detach().float() / sampler.micro_per_iter
        names = sorted(totals)
        values = _mean_over_processes(torch.stack([totals[k] for k in names]), ctx).tolist()
        record = dict(zip(names, values))
        total = sum(values)
        if not math.isfinite(total):
            raise FloatingPointError(f"training diverged at iteration {iteration}: losses {record}")
        scaler.unscale_(optimizer)
        clip_gradients(model.parameters(), solver)
        scaler.step(optimizer)
        scaler.update()
        record.update(iteration=iteration, total=total, lr=optimizer.param_groups[0]["lr"])
        scheduler.step()
        history.append(record)
        bar.update(1)
        done = iteration + 1
        if ctx.is_main and (done % LOG_PERIOD == 0 or done == solver.max_iter):
            rate = (done - start) / max(time.perf_counter() - started, 1e-9)
            eta = (solver.max_iter - done) / max(rate, 1e-9)
            progress = {"iteration": done, "max_iter": solver.max_iter, "total_loss": total, "lr": record["lr"],
                        "iters_per_second": rate, "eta_seconds": eta}
            log.info("train iteration %d/%d loss %.4f lr %.5f %.2f it/s eta %ds",
                     done, solver.max_iter, total, record["lr"], rate, int(eta))
            storage.write_json(storage.join(out_dir, "progress.json"), progress)
        if done % cfg.checkpoint_period == 0 or done == solver.max_iter:
            save(done)
    bar.close()
    seconds = time.perf_counter() - started
    final = storage.join(out_dir, "model_final.pth")
    if ctx.is_main:
        save_checkpoint(final, model, model_cfg, solver.max_iter)
        storage.write_json(storage.join(out_dir, "loss.json"), history)
        storage.atomic_write_bytes(storage.join(out_dir, "loss.png"), loss_curves_png(history))
    if ctx.distributed:
        dist.barrier()
    ran = solver.max_iter - start
    return TrainResult(
        iterations=solver.max_iter, resumed_from=start, final_checkpoint=final, history=history,
        seconds=seconds, iters_per_second=ran / seconds if ran and seconds > 0 else 0.0,
    )
