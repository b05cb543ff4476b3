"""Global steps read the plan's shard manifests one at a time (`RunDir.iter_shards`), never all at once."""

from __future__ import annotations

import shutil

import pytest
from test_merge_evaluate_end_to_end import T, config, fake_upstream, merge_all, synthetic_gt  # noqa: F401

from u2seg_core.evaluate.stage import evaluate_run, evaluate_shard
from u2seg_core.rundir import RunDir


def test_evaluate_run_streams_the_shard_manifests(planned_run, synthetic_gt, monkeypatch):  # noqa: F811
    run = fake_upstream(planned_run, synthetic_gt, lambda a: a["category_id"])
    shutil.copytree(synthetic_gt, run.url("synthetic"))
    cfg = config(T, overlays=1)
    merge_all(run, cfg)
    for shard in run.iter_shards():
        evaluate_shard(run, shard, cfg)

    read: list[str] = []
    real_iter = RunDir.iter_shards

    def counting(self: RunDir):
        for shard in real_iter(self):
            read.append(shard.name)
            yield shard

    def load_all(self: RunDir):
        raise AssertionError("a global step loaded every shard manifest at once")

    monkeypatch.setattr(RunDir, "iter_shards", counting)
    monkeypatch.setattr(RunDir, "shards", load_all)
    result = evaluate_run(run, cfg)
    assert read == ["shard-00000"]  # its 2 images are enough for the 1 overlay: shard-00001 is never read
    assert result.summary["n_images"] == 4
    assert result.summary["rows"]["pseudo-labels/u2seg"]["PQ"] == pytest.approx(100.0)
