"""Optimiser, learning-rate schedule and gradient clipping as detectron2 builds them from `SOLVER.*`
(solver/build.py, solver/lr_scheduler.py): SGD over parameter groups where normalisation layers get
`weight_decay_norm` and biases `bias_lr_factor` / `weight_decay_bias`; WarmupMultiStepLR; clipping of each
parameter's gradient on its own ("norm" / "value") or of all together ("full_model"), after AMP unscaling.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

import torch
from torch import nn

from ..config import SolverConfig
from ..model.layers import FrozenBatchNorm2d

NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm, FrozenBatchNorm2d,
)


def parameter_groups(model: nn.Module, cfg: SolverConfig) -> list[dict]:
    """One group per (lr, weight decay) pair, in first-seen parameter order (deterministic)."""
    lr = cfg.lr
    weight_decay_bias = cfg.weight_decay if cfg.weight_decay_bias is None else cfg.weight_decay_bias
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue
            seen.add(id(param))
            p_lr, p_wd = lr, cfg.weight_decay
            if isinstance(module, NORM_TYPES):
                p_wd = cfg.weight_decay_norm
            if name == "bias" and (cfg.bias_lr_factor != 1.0 or weight_decay_bias != cfg.weight_decay):
                p_lr, p_wd = lr * cfg.bias_lr_factor, weight_decay_bias
            groups.setdefault((p_lr, p_wd), []).append(param)
    return [{"params": params, "lr": g_lr, "weight_decay": g_wd} for (g_lr, g_wd), params in groups.items()]


def build_optimizer(model: nn.Module, cfg: SolverConfig) -> torch.optim.SGD:
    return torch.optim.SGD(
        parameter_groups(model, cfg), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov
    )


class WarmupMultiStep:
    """LR multiplier at iteration i: gamma ** (number of steps <= i), times the linear (or constant) warmup
    factor `warmup_factor * (1 - i / warmup_iters) + i / warmup_iters` while i < warmup_iters."""

    def __init__(self, cfg: SolverConfig) -> None:
        self.steps = sorted(s for s in cfg.steps if s <= cfg.max_iter)
        self.gamma, self.warmup_iters = cfg.gamma, cfg.warmup_iters
        self.warmup_factor, self.warmup_method = cfg.warmup_factor, cfg.warmup_method

    def __call__(self, iteration: int) -> float:
        value = self.gamma ** bisect.bisect_right(self.steps, iteration)
        if iteration < self.warmup_iters:
            if self.warmup_method == "constant":
                return value * self.warmup_factor
            alpha = iteration / self.warmup_iters
            return value * (self.warmup_factor * (1 - alpha) + alpha)
        return value


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: SolverConfig) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupMultiStep(cfg))


def clip_gradients(params: Iterable[nn.Parameter], cfg: SolverConfig) -> None:
    """Clip gradients in place as `cfg.clip_type` says (no-op when clipping is off)."""
    if not cfg.clip_gradients:
        return
    with_grad = [p for p in params if p.grad is not None]
    if cfg.clip_type == "full_model":
        torch.nn.utils.clip_grad_norm_(with_grad, cfg.clip_value, cfg.norm_type)
    elif cfg.clip_type == "norm":
        for p in with_grad:
            torch.nn.utils.clip_grad_norm_(p, cfg.clip_value, cfg.norm_type)
    else:
        torch.nn.utils.clip_grad_value_(with_grad, cfg.clip_value)
