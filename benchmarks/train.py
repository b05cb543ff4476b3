"""Training benchmark: the detector trained longer on the synthetic demo data, iterations/s, and the PQ it reaches
next to its pseudo-labels' PQ on the same held-out images.

Runs the demo pipeline (plan -> ... -> merge, reused when `--out` already holds it) with the train stage's
`max_iter` raised, then predict (held-out images) and evaluate, and prints one table: for each prediction set
(pseudo-labels, model) and protocol, PQ / SQ / RQ (things, stuff), box / mask AP and mIoU, plus the training
speed on this machine's device (CPU, or the GPU named). Minutes on 2 CPU cores; not a test.

    python benchmarks/train.py                          # 1000 iterations into runs/bench-train
    python benchmarks/train.py --iters 3000 --out /tmp/bench --device cuda
"""

from __future__ import annotations

import argparse

import torch

from u2seg_core.config import PipelineConfig
from u2seg_core.local_runner import run_pipeline_local

COLUMNS = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP_box", "AP_mask", "mIoU")


def configure(iters: int, device: str, lr: float | None) -> PipelineConfig:
    demo = PipelineConfig.demo()
    solver = demo.train.solver.model_copy(update={
        "max_iter": iters, "steps": (int(iters * 0.85),), "warmup_iters": min(100, iters // 10),
        **({"base_lr": lr} if lr else {}),
    })
    train = demo.train.model_copy(update={"solver": solver, "checkpoint_period": max(iters // 4, 1), "device": device})
    return demo.model_copy(update={"train": train})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/bench-train", help="run directory (earlier stages are reused)")
    parser.add_argument("--iters", type=int, default=1000, help="training iterations (demo preset: 240)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--lr", type=float, default=None, help="base_lr at the reference batch (default: demo's)")
    args = parser.parse_args()

    cfg = configure(args.iters, args.device, args.lr)
    manifests = run_pipeline_local(cfg, args.out)
    train = manifests["train"]
    uses_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.cuda.get_device_name(0) if uses_cuda else f"CPU ({torch.get_num_threads()} threads)"
    metrics = train.global_result.metrics if train.global_result else {}
    print(f"training: {train.summary['iterations']} iterations on {train.summary['n_train_images']} images "
          f"(batch {cfg.train.solver.ims_per_batch}), {metrics.get('iters_per_second', 0.0):.2f} iterations/s "
          f"on {device}; held-out images: {train.summary['n_held_out']}")
    print(f"final total loss {metrics.get('final_losses', {}).get('total', float('nan')):.3f} "
          f"(first iteration {metrics.get('first_total_loss', float('nan')):.3f})")
    rows = manifests["evaluate"].summary.get("rows", {})
    print(f"\n| set / protocol | {' | '.join(COLUMNS)} |\n|---|{'---|' * len(COLUMNS)}")
    for name, numbers in rows.items():
        cells = " | ".join(f"{numbers[c]:.1f}" if isinstance(numbers.get(c), (int, float)) else "-" for c in COLUMNS)
        print(f"| {name} | {cells} |")
    for protocol in sorted({name.split("/", 1)[1] for name in rows}):
        labels, model = rows.get(f"pseudo-labels/{protocol}", {}), rows.get(f"model/{protocol}", {})
        if labels.get("PQ") and model.get("PQ") is not None:
            print(f"{protocol}: model PQ {model['PQ']:.1f} = {model['PQ'] / labels['PQ']:.2f} x the pseudo-labels' "
                  f"{labels['PQ']:.1f}")


if __name__ == "__main__":
    main()
