"""The train stage: outputs, reuse of a finished training, identity; which stages a whole run includes."""

from __future__ import annotations

import pytest

from test_train_loop import tiny_train
from u2seg_core import storage
from u2seg_core.config import ClusterConfig, PipelineConfig, StegoConfig
from u2seg_core.model.checkpoint import load_checkpoint
from u2seg_core.registry import select_stages
from u2seg_core.train.stage import train_job, train_stage


def _config(**train) -> PipelineConfig:
    return PipelineConfig.demo(
        cluster=ClusterConfig(k=3), stego=StegoConfig(n_classes=2), train=tiny_train(**train)
    )


@pytest.mark.slow
def test_train_stage_outputs_and_reuse(merged_run):
    run = merged_run(n=5, size=48, shard_size=3)
    cfg = _config(max_iter=2, period=1)
    result = train_stage(run, cfg)
    assert result.outputs["checkpoint"] == "train/model_final.pth"
    state, model_cfg = load_checkpoint(run.url("train", "model_final.pth"))
    assert (model_cfg.num_things, model_cfg.num_stuff) == (3, 2)
    assert result.summary["iterations"] == 2 and result.summary["n_train_images"] + result.summary["n_held_out"] == 5
    assert set(result.metrics["final_losses"]) >= {"total", "loss_mask", "loss_sem_seg"}
    mtime = storage.get_fs(run.url("train", "model_final.pth"))[0].modified(run.url("train", "model_final.pth"))
    again = train_stage(run, cfg)  # finished training of the same identity: reused, not retrained
    assert again.summary == result.summary
    assert storage.get_fs(run.url("train", "model_final.pth"))[0].modified(run.url("train", "model_final.pth")) == mtime
    assert train_job(run, _config(max_iter=3, period=1)).identity != train_job(run, cfg).identity


def test_external_launcher_asks_for_the_job(merged_run):
    run = merged_run(n=3, size=48, shard_size=3)
    cfg = _config(max_iter=2)
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"launcher": "external"})})
    with pytest.raises(RuntimeError, match="sbatch deploy/train_slurm.sbatch"):
        train_stage(run, cfg)
    assert storage.exists(run.url("train", "job.json"))


def test_whole_run_includes_train_and_predict_when_evaluate_reads_the_model():
    demo = PipelineConfig.demo()
    assert select_stages(None, demo)[-3:] == ["train", "predict", "evaluate"]
    assert "train" not in select_stages(None, PipelineConfig())  # evaluate reads only the pseudo-labels
    assert select_stages(None) == ["plan", "features", "maskcut", "cluster", "stego", "merge", "evaluate"]
