"""Training loop: losses fall without NaN; resume after a kill equals an uninterrupted run; 2-process gloo DDP
equals one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from u2seg_core import storage
from u2seg_core.model import build_model
from u2seg_core.config import SolverConfig, TrainConfig, TrainDataConfig
from u2seg_core.model.config import (
    BoxHeadConfig, FPNConfig, InputConfig, MaskHeadConfig, ModelConfig, ROIHeadsConfig, RPNConfig, SemSegHeadConfig,
)
from u2seg_core.train.checkpoints import latest_checkpoint
from u2seg_core.train.dataset import MergeDataset, build_index
from u2seg_core.train.launch import TrainJob, launch, result_url
from u2seg_core.train.loop import EXIT_ENV, train_model


def tiny_model(input_cfg: InputConfig | None = None) -> ModelConfig:
    demo = ModelConfig.demo(num_things=3, num_stuff=2)
    return demo.model_copy(update={
        "fpn": FPNConfig(out_channels=32, norm="GN"),
        "rpn": RPNConfig(pre_nms_topk_train=200, post_nms_topk_train=200, pre_nms_topk_test=100, post_nms_topk_test=100),
        "roi_heads": ROIHeadsConfig(num_classes=3, batch_size_per_image=64, detections_per_image=20),
        "box_head": BoxHeadConfig(fc_dim=64),
        "mask_head": MaskHeadConfig(num_conv=1, conv_dim=32),
        "sem_seg_head": SemSegHeadConfig(num_classes=3, convs_dim=32, norm="GN"),
        "input": input_cfg or InputConfig(min_size_test=64, max_size_test=96, min_size_train=(64, 80), max_size_train=96),
    })


def tiny_train(max_iter: int = 4, ims_per_batch: int = 2, ims_per_device: int = 2, lr: float = 0.02,
               period: int = 2, workers: int = 0) -> TrainConfig:
    return TrainConfig(
        model=tiny_model(),
        solver=SolverConfig(ims_per_batch=ims_per_batch, base_lr=lr, reference_batch=ims_per_batch,
                            max_iter=max_iter, steps=(max_iter - 1,), warmup_iters=1),
        data=TrainDataConfig(ims_per_device=ims_per_device, num_workers=workers),
        checkpoint_period=period, device="cpu",
    )


def _job(run, cfg: TrainConfig, out: str) -> TrainJob:
    return TrainJob(run.root, run.url(out), cfg, cfg.model, identity="test")


def _weights(url: str) -> dict[str, torch.Tensor]:
    import io

    return torch.load(io.BytesIO(storage.read_bytes(url)), weights_only=True)["model"]


@pytest.mark.slow
def test_losses_fall_and_stay_finite(merged_run):
    run = merged_run(n=4, size=64, shard_size=4)
    fixed = tiny_model(InputConfig(min_size_train=(64,), max_size_train=96, random_flip="none"))
    cfg = tiny_train(max_iter=12, lr=0.05, period=100).model_copy(update={"model": fixed})
    index, _ = build_index(run, 0.0)
    dataset = MergeDataset(run, index, fixed.input)
    result = train_model(dataset, cfg, fixed, run.url("train"), "test")
    history = result.history
    assert len(history) == 12
    for row in history:
        assert all(torch.isfinite(torch.tensor(v)) for k, v in row.items())
    terms = [k for k in history[0] if k.startswith("loss_")]
    assert len(terms) == 10  # semantic, 2 RPN, 3 x (cls, box), mask
    first = {k: sum(r[k] for r in history[:3]) / 3 for k in terms + ["total"]}
    last = {k: sum(r[k] for r in history[-3:]) / 3 for k in terms + ["total"]}
    assert last["total"] < 0.8 * first["total"]
    for k in ("loss_sem_seg", "loss_rpn_cls", "loss_cls_stage0", "loss_cls_stage1", "loss_cls_stage2", "loss_mask"):
        assert last[k] < first[k], (k, first[k], last[k])
    for name in ("model_final.pth", "loss.json", "loss.png", "progress.json"):
        assert storage.exists(run.url("train", name))


def _run_job_process(job: TrainJob, tmp_path, name: str, **env: str) -> subprocess.CompletedProcess:
    """The job as the train stage's processes run it (`python -m u2seg_core.train.launch JOB`), in a fresh
    interpreter with one intra-op thread, so every run's CPU reductions are the same whatever this process did."""
    path = tmp_path / f"{name}.json"
    storage.write_json(str(path), job.to_json())
    return subprocess.run([sys.executable, "-m", "u2seg_core.train.launch", str(path)],
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.slow
def test_killed_training_resumes_to_the_same_weights(merged_run, tmp_path):
    run = merged_run(n=6, size=64, shard_size=3, empty=(2,))
    cfg = tiny_train(max_iter=4, period=2, workers=1)
    reference = _job(run, cfg, "uninterrupted")
    done = _run_job_process(reference, tmp_path, "uninterrupted")
    assert done.returncode == 0, done.stderr[-2000:]
    assert storage.read_json(result_url(reference.out_dir))["resumed_from"] == 0

    job = _job(run, cfg, "killed")
    killed = _run_job_process(job, tmp_path, "killed", **{EXIT_ENV: "2"})
    assert killed.returncode == 70, killed.stderr[-2000:]
    assert latest_checkpoint(job.out_dir)[0] == 2 and not storage.exists(run.url("killed", "model_final.pth"))

    resumed = _run_job_process(job, tmp_path, "resumed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from iteration 2" in resumed.stderr
    assert storage.read_json(result_url(job.out_dir))["resumed_from"] == 2
    a, b = _weights(run.url("uninterrupted", "model_final.pth")), _weights(run.url("killed", "model_final.pth"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.mark.slow
def test_two_process_gloo_ddp_equals_one_process(merged_run):
    run = merged_run(n=6, size=64, shard_size=3, portrait=(3,))
    single = tiny_train(max_iter=3, ims_per_batch=2, ims_per_device=1, period=10)
    launch(_job(run, single, "single"), 1)
    two = single.model_copy(update={"processes": 2})
    result = launch(_job(run, two, "ddp"), 2)
    assert result["iterations"] == 3
    a, b = _weights(run.url("single", "model_final.pth")), _weights(run.url("ddp", "model_final.pth"))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-6)
    # the weights moved away from the seeded init, so the comparison is not vacuous
    torch.manual_seed(single.seed)
    init = build_model(single.model).state_dict()
    moved = sum(not torch.equal(init[k], a[k]) for k in a if k in init)
    assert moved > len(a) // 2
