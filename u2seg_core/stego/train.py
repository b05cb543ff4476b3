"""Training the STEGO head and cluster probe from stored features, with checkpoints and exact resume.

STEGO's settings: Adam (lr 5e-4) on the head, Adam (lr 5e-3) on the cluster probe, no schedule, no
weight decay, both stepped every step; the probe trains on detached codes. The supervised linear
probe of STEGO is not trained (no labels). Every random choice of step t (batch, KNN positive, sample
points, negative permutations, dropout masks) is drawn from a generator seeded by (seed, t), so a run
resumed from a checkpoint ends with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .. import storage
from ..config import StegoConfig
from ..device import resolve_device
from .checkpoint import save_head
from .crops import TrainingItems
from .tokens import StoredRows
from .head import StegoHead
from .knn import knn_table
from .loss import correspondence_loss, draw_sampling
from .probe import ClusterProbe

log = logging.getLogger(__name__)

# fields that do not change what training computes (a run may resume across changes of these)
NON_TRAINING_FIELDS = {
    "steps", "checkpoint_every", "pretrained", "probe", "inference_resolution", "crf", "crf_params", "device",
    "preload_bytes",
}
HISTORY_KEYS = ("step", "loss", "self", "knn", "random", "probe")
CHECKPOINT_NAME = re.compile(r"step-(\d{6,})\.pt$")


@dataclass
class TrainResult:
    """What `train_stego` returns (modules on the training device, in eval mode)."""

    head: StegoHead
    cluster_probe: ClusterProbe
    history: dict[str, list[float]]
    steps: int
    resumed_from: int
    n_items: int
    seconds: float
    steps_per_s: float
    outputs: dict[str, str] = field(default_factory=dict)


def training_identity(cfg: StegoConfig, tokens_shape: tuple[int, ...], data_identity: str = "") -> str:
    """Hash of everything that determines the trained weights except the step count."""
    config = cfg.model_dump(mode="json", exclude=NON_TRAINING_FIELDS)
    return storage.hash_json([config, list(tokens_shape)] + ([data_identity] if data_identity else []))


def step_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


class BatchSampler:
    """Epochs of shuffled items without replacement (last incomplete batch dropped); batch of step t is fixed."""

    def __init__(self, n_items: int, batch_size: int, seed: int):
        self.n_items = n_items
        self.batch_size = min(batch_size, n_items)
        self.seed = seed
        self._epoch = -1
        self._order = np.arange(0)

    def __call__(self, step: int) -> np.ndarray:
        epoch, position = divmod(step, self.n_items // self.batch_size)
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n_items)
        return self._order[position * self.batch_size : (position + 1) * self.batch_size]


def checkpoint_url(out_dir: str, step: int) -> str:
    return storage.join(out_dir, "checkpoints", f"step-{step:06d}.pt")


def latest_checkpoint(out_dir: str, max_step: int) -> tuple[int, str] | None:
    """(step, url) of the newest checkpoint at or before `max_step`, if any."""
    found = []
    for name in storage.listdir(storage.join(out_dir, "checkpoints")):
        match = CHECKPOINT_NAME.fullmatch(name)
        if match and int(match.group(1)) <= max_step:
            found.append((int(match.group(1)), checkpoint_url(out_dir, int(match.group(1)))))
    return max(found) if found else None


def _save_torch(url: str, obj: dict) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    storage.atomic_write_bytes(url, buffer.getvalue())


def _cuda_rng_devices(device: torch.device) -> list[int]:
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def train_stego(
    tokens: np.ndarray | Tensor | StoredRows,
    cfg: StegoConfig,
    out_dir: str,
    device: str = "auto",
    data_identity: str = "",
) -> TrainResult:
    """Train head + cluster probe on stored tokens (n, C, h, w) for `cfg.steps` steps.

    tokens: in memory, or the stored sample (read into memory when at most `cfg.preload_bytes`, else
    streamed batch by batch; the same weights either way). data_identity: what the tokens are (e.g. a
    hash of the feature store and sample), so checkpoints of other data of the same shape are not resumed.

    Writes under `out_dir` (local path or URL): checkpoints/step-NNNNNN.pt every `cfg.checkpoint_every`
    steps and at the end (weights, optimiser states, loss history), loss.json, loss.png and head.pt.
    Resumes from the newest checkpoint of the same training identity; checkpoints of another
    identity are removed (with a warning) before training starts afresh.
    """
    started = time.perf_counter()
    torch_device = resolve_device(device)
    items = TrainingItems(tokens, cfg.crop, cfg.train_grid, torch_device, cfg.preload_bytes, cfg.crop_ratio)
    knn = knn_table(items.pooled(), cfg.knn, use_gpu=torch_device.type == "cuda")
    sampler = BatchSampler(len(items), cfg.batch_size, cfg.seed)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        head = StegoHead(items.channels, cfg.dim, cfg.dropout)
        probe = ClusterProbe(cfg.dim, cfg.n_classes)
    head.to(torch_device).train()
    probe.to(torch_device).train()
    head_optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    probe_optimizer = torch.optim.Adam(probe.parameters(), lr=cfg.probe_lr)

    identity = training_identity(cfg, items.shape, data_identity)
    history: dict[str, list[float]] = {key: [] for key in HISTORY_KEYS}
    start_step = 0
    latest = latest_checkpoint(out_dir, cfg.steps)
    if latest is not None:
        state = torch.load(io.BytesIO(storage.read_bytes(latest[1])), map_location=torch_device, weights_only=True)
        if state["identity"] == identity:
            head.load_state_dict(state["head"])
            probe.load_state_dict(state["probe"])
            head_optimizer.load_state_dict(state["head_optimizer"])
            probe_optimizer.load_state_dict(state["probe_optimizer"])
            history = {key: list(state["history"][key]) for key in HISTORY_KEYS}
            start_step = int(state["step"])
            log.info("resuming STEGO training from %s (step %d)", latest[1], start_step)
        else:
            log.warning(
                "%s was written for another training config or feature set; removing %s/checkpoints and "
                "training from step 0", latest[1], out_dir,
            )
            storage.remove(storage.join(out_dir, "checkpoints"), recursive=True)

    loop_started = time.perf_counter()
    streamed = isinstance(items.source, StoredRows)  # read step t+1's grids from the store while step t trains
    for inputs in step_inputs(items, knn, sampler, cfg, range(start_step, cfg.steps), ahead=streamed):
        step = inputs.step
        losses = training_step(
            items, knn, sampler, head, probe, (head_optimizer, probe_optimizer), cfg, step, inputs
        )
        for key in HISTORY_KEYS:
            history[key].append(float(step) if key == "step" else losses[key])
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            _save_torch(
                checkpoint_url(out_dir, done),
                {
                    "step": done,
                    "identity": identity,
                    "head": head.state_dict(),
                    "probe": probe.state_dict(),
                    "head_optimizer": head_optimizer.state_dict(),
                    "probe_optimizer": probe_optimizer.state_dict(),
                    "history": history,
                },
            )
    loop_seconds = time.perf_counter() - loop_started
    head.eval()
    probe.eval()

    trained = cfg.steps - start_step
    outputs = {
        "head": storage.join(out_dir, "head.pt"),
        "loss": storage.join(out_dir, "loss.json"),
        "loss_plot": storage.join(out_dir, "loss.png"),
    }
    save_head(outputs["head"], head, probe, {"source": "trained", "steps": cfg.steps, "identity": identity})
    storage.write_json(outputs["loss"], {"steps": cfg.steps, "n_items": len(items), "history": history})
    storage.atomic_write_bytes(outputs["loss_plot"], loss_plot_png(history))
    return TrainResult(
        head=head,
        cluster_probe=probe,
        history=history,
        steps=cfg.steps,
        resumed_from=start_step,
        n_items=len(items),
        seconds=time.perf_counter() - started,
        steps_per_s=trained / loop_seconds if trained and loop_seconds > 0 else 0.0,
        outputs=outputs,
    )


@dataclass
class StepInputs:
    """What step t trains on: its batch's features (B, C, g, g), their KNN positives' features, and the step's
    generator after drawing the positives (it goes on to draw the loss's sample points and negatives)."""

    step: int
    generator: torch.Generator
    feats: Tensor
    feats_pos: Tensor


def load_step_inputs(
    items: TrainingItems, knn: np.ndarray, sampler: BatchSampler, cfg: StegoConfig, step: int
) -> StepInputs:
    generator = torch.Generator().manual_seed(step_seed(cfg.seed, step))
    batch = sampler(step)
    positives = knn[batch, torch.randint(knn.shape[1], (len(batch),), generator=generator).numpy()]
    return StepInputs(step, generator, items.gather(batch), items.gather(positives))


def step_inputs(
    items: TrainingItems, knn: np.ndarray, sampler: BatchSampler, cfg: StegoConfig, steps: range, ahead: bool
) -> Iterator[StepInputs]:
    """`load_step_inputs` of every step in order; `ahead` loads step t+1 in a background thread while the
    caller trains step t (the same inputs either way: every draw depends on the step only)."""
    if not ahead:
        yield from (load_step_inputs(items, knn, sampler, cfg, step) for step in steps)
        return
    with ThreadPoolExecutor(1, thread_name_prefix="u2seg-prefetch") as pool:
        pending = [pool.submit(load_step_inputs, items, knn, sampler, cfg, step) for step in steps[:1]]
        for step in steps:
            current = pending.pop().result()
            if step + 1 < steps.stop:
                pending.append(pool.submit(load_step_inputs, items, knn, sampler, cfg, step + 1))
            yield current


def training_step(
    items: TrainingItems,
    knn: np.ndarray,
    sampler: BatchSampler,
    head: StegoHead,
    probe: ClusterProbe,
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer],
    cfg: StegoConfig,
    step: int,
    inputs: StepInputs | None = None,
) -> dict[str, float]:
    """One optimisation step of head and probe (on `inputs`, else loaded here); returns the step's loss values."""
    seed = step_seed(cfg.seed, step)
    inputs = inputs or load_step_inputs(items, knn, sampler, cfg, step)
    generator, feats, feats_pos = inputs.generator, inputs.feats, inputs.feats_pos
    batch_size = len(feats)
    draw = draw_sampling(batch_size, cfg.loss, generator)
    with torch.random.fork_rng(devices=_cuda_rng_devices(items.device)):
        torch.manual_seed(seed)  # dropout masks
        codes = head(feats)
        codes_pos = head(feats_pos)
        loss = correspondence_loss(
            head.loss_features(feats), head.loss_features(feats_pos), codes, codes_pos, cfg.loss, draw
        )
    probe_loss = probe.loss(codes)
    for optimizer in optimizers:
        optimizer.zero_grad(set_to_none=True)
    (loss.total + probe_loss).backward()
    for optimizer in optimizers:
        optimizer.step()
    return {
        "loss": loss.total.item(),
        "self": loss.self_term.item(),
        "knn": loss.knn_term.item(),
        "random": loss.random_term.item(),
        "probe": probe_loss.item(),
    }


def loss_plot_png(history: dict[str, list[float]]) -> bytes:
    """PNG of the loss curves: correspondence loss and its terms, and the cluster-probe loss."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2)
    for key, label in (("loss", "total (weighted)"), ("self", "self"), ("knn", "knn"), ("random", "random")):
        left.plot(history["step"], history[key], label=label, linewidth=1)
    left.set(title="correspondence loss", xlabel="step")
    left.legend()
    right.plot(history["step"], history["probe"], color="tab:purple", linewidth=1)
    right.set(title="cluster-probe loss", xlabel="step")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
