"""What enters a stage's cache keys beyond its config: the source of every module it imports
(`cache_keys.stage_source_files`) and dataset-level key material (`StageSpec.key_material`, features' stored
fraction)."""

from __future__ import annotations

from pathlib import Path

import pytest

from u2seg_core import cache_keys, storage
from u2seg_core.cache_keys import PACKAGE_ROOT, stage_source_files
from u2seg_core.config import PipelineConfig
from u2seg_core.manifest import ShardResult, StageManifest
from u2seg_core.registry import STAGES
from u2seg_core.rundir import RunDir
from u2seg_core.stage_run import StageRun


def _files(stage: str) -> set[str]:
    return {p.relative_to(PACKAGE_ROOT).as_posix() for p in stage_source_files(STAGES[stage].step_modules)}


def test_stage_sources_follow_the_imports_and_stop_at_the_machinery():
    predict, evaluate, features = _files("predict"), _files("evaluate"), _files("features")
    assert {"viz.py", "merge/panoptic.py", "predict/writers.py", "model/meta_arch.py"} <= predict
    assert {"evaluate/datasets/cityscapes.py", "merge/panoptic.py", "evaluate/pq.py"} <= evaluate
    assert {"features/sample.py", "io/loader.py", "backbone/vit.py", "store/feature_store.py"} <= features
    assert {"merge/panoptic.py", "coco.py"} <= _files("merge")
    for stage in STAGES:
        assert not {"config.py", "storage.py", "manifest.py", "registry.py", "stage_run.py"} & _files(stage), stage
    assert "maskcut/stage.py" not in _files("merge") and "io/plan.py" not in features


@pytest.mark.parametrize(("stage", "module"), [
    ("predict", "viz.py"), ("predict", "merge/panoptic.py"), ("evaluate", "merge/panoptic.py"),
    ("evaluate", "evaluate/datasets/cityscapes.py"), ("features", "features/sample.py"),
    ("cluster", "cluster/kmeans.py"),
])
def test_an_edited_imported_module_changes_the_stage_key_only_where_imported(monkeypatch, stage, module):
    cfg = PipelineConfig.demo()
    keys = {name: cache_keys.shard_cache_key(spec, cfg, "shard-00000", "", {}) for name, spec in STAGES.items()}
    real = cache_keys._file_digest
    edited = PACKAGE_ROOT / module
    monkeypatch.setattr(cache_keys, "_file_digest", lambda p: "edited" if p == edited else real(p))
    after = {name: cache_keys.shard_cache_key(spec, cfg, "shard-00000", "", {}) for name, spec in STAGES.items()}
    assert after[stage] != keys[stage]
    for name in STAGES:
        assert (after[name] != keys[name]) == (edited in stage_source_files(STAGES[name].step_modules)), name
    assert after["plan"] == keys["plan"]  # plan imports none of these modules


def _fake_plan(run: RunDir, n_images: int) -> None:
    """A plan manifest with two shards whose contents stay the same while the planned N varies."""
    shards = [ShardResult(stage="plan", shard=f"shard-0000{i}", n_images=4, digest=f"d{i}") for i in range(2)]
    manifest = StageManifest(
        stage="plan", stage_version="2", code_version="c", config={}, config_hash="h", shards=shards,
        summary={"n_images": n_images, "n_shards": 2, "shards": [[0, "s0"], [1, "s1"]]},
    )
    storage.write_json(run.stage_manifest_url("plan"), manifest.model_dump(mode="json"))


def _keys(run: RunDir, cfg: PipelineConfig, stage: str, n_images: int) -> list[str]:
    _fake_plan(run, n_images)
    return [key for _, key in StageRun.start(STAGES[stage], run, cfg).shard_keys()]


def test_features_keys_change_when_the_planned_n_crosses_a_store_fraction_boundary(tmp_path: Path):
    run = RunDir(str(tmp_path / "run"))
    cfg = PipelineConfig.demo()
    cfg = cfg.model_copy(update={"features": cfg.features.model_copy(update={"stego_sample": 100})})
    base = _keys(run, cfg, "features", 1000)  # sample 100 / 1000 = 0.1: stored below 0.125
    assert _keys(run, cfg, "features", 900) == base  # 0.111: still 0.125, every shard stays cached
    assert _keys(run, cfg, "features", 801) == base
    crossed = _keys(run, cfg, "features", 700)  # 0.143: stored below 0.25, every shard recomputes
    assert len(crossed) == 2 and not set(crossed) & set(base)
    assert not set(_keys(run, cfg, "features", 1700)) & set(base)  # 0.059: 0.0625
    # a stage without key material keys only on its shard's upstream result
    assert _keys(run, cfg, "maskcut", 1000) == _keys(run, cfg, "maskcut", 700)
