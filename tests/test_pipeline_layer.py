"""The executor-independent pipeline layer (no Prefect): cache keys, done-markers, failure threshold, status."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from u2seg_core import storage
from u2seg_core.config import PipelineConfig, SourceConfig
from u2seg_core.manifest import ShardResult
from u2seg_core.pipeline import (
    FAULT_ENV,
    STAGES,
    InjectedFault,
    ShardFailedError,
    ShardRef,
    StageRun,
    global_cache_key,
    run_pipeline_local,
    run_status,
    shard_cache_key,
    shard_refs,
)
from u2seg_core.rundir import RunDir


def _marker_mtimes(run: RunDir, stage: str) -> dict[str, int]:
    folder = Path(run.url(stage, "_shards"))
    return {p.stem: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.json"))}


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_keys_change_with_their_own_inputs_only():
    cfg = PipelineConfig.demo()
    spec, shard, upstream = STAGES["maskcut"], ShardRef(3, "aaaa"), {"plan": "p1"}
    key = shard_cache_key(spec, cfg, shard, upstream)
    assert key.startswith("maskcut-shard-00003-")
    assert key == shard_cache_key(spec, PipelineConfig.demo(), ShardRef(3, "aaaa"), dict(upstream))

    other_stage_cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"k": 5})})
    own_cfg = cfg.model_copy(update={"maskcut": cfg.maskcut.model_copy(update={"tau": 0.2})})
    assert shard_cache_key(spec, other_stage_cfg, shard, upstream) == key
    changed = {
        shard_cache_key(spec, own_cfg, shard, upstream),
        shard_cache_key(spec, cfg, ShardRef(3, "bbbb"), upstream),
        shard_cache_key(spec, cfg, shard, {"plan": "p2"}),
        shard_cache_key(spec, cfg, shard, upstream, global_hash="g"),
    }
    assert key not in changed and len(changed) == 4
    merge = STAGES["merge"]
    assert global_cache_key(merge, cfg, upstream) != global_cache_key(merge, cfg, upstream, ["shard-hash"])


def test_local_run_skips_done_shards_and_recomputes_lost_outputs(tmp_path, tiny_pipeline_config):
    run = RunDir(str(tmp_path / "run"))
    manifests = run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan", "features"])
    assert manifests["plan"].summary["n_shards"] == 3 and len(shard_refs(run)) == 3
    assert [s.shard for s in manifests["features"].shards] == ["shard-00000", "shard-00001", "shard-00002"]
    assert storage.read_json(run.run_manifest)["stages"]["features"] == manifests["features"].hash
    store = tmp_path / "run" / "store.zarr" / "features"
    before, outputs = _marker_mtimes(run, "features"), _tree_bytes(store)

    again = run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan", "features"])
    assert _marker_mtimes(run, "features") == before  # nothing recomputed
    assert again["features"].hash == manifests["features"].hash

    storage.remove(str(store / "shard-00001"), recursive=True)  # a marker whose outputs are gone is no hit
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"])
    after = _marker_mtimes(run, "features")
    assert after["shard-00000"] == before["shard-00000"] and after["shard-00002"] == before["shard-00002"]
    assert after["shard-00001"] != before["shard-00001"]
    assert _tree_bytes(store) == outputs


def test_refresh_recomputes_every_shard(tmp_path, tiny_pipeline_config):
    run = RunDir(str(tmp_path / "run"))
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan", "features"])
    before = _marker_mtimes(run, "features")
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"], refresh=["features"])
    after = _marker_mtimes(run, "features")
    assert all(after[shard] != before[shard] for shard in before)


def test_injected_fault_costs_one_shard_and_is_reported(tmp_path, tiny_pipeline_config, monkeypatch):
    run = RunDir(str(tmp_path / "run"))
    monkeypatch.setenv(FAULT_ENV, "features:shard-00001")
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan"])
    with pytest.raises(InjectedFault, match="features shard-00001"):
        run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"])
    features = {s.stage: s for s in run_status(run)}["features"]
    assert not features.complete and features.done == ["shard-00000"]  # the sequential runner stops here
    assert list(features.errors) == ["shard-00001"] and "injected" in features.errors["shard-00001"]

    monkeypatch.delenv(FAULT_ENV)
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"])
    features = {s.stage: s for s in run_status(run)}["features"]
    assert features.complete and features.done == ["shard-00000", "shard-00001", "shard-00002"]
    assert features.errors == {}


def _write_folder_source(folder: Path, n_good: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_shard_over_the_failure_threshold_fails_loudly_with_the_list(tmp_path, tiny_pipeline_config):
    images = tmp_path / "images"
    _write_folder_source(images, n_good=3)  # shards: [img0, img1], [img2, zz_broken]
    source = SourceConfig(uri=str(images), shard_size=2)
    strict = tiny_pipeline_config.model_copy(
        update={"source": source, "orchestration": tiny_pipeline_config.orchestration.model_copy(
            update={"max_failure_rate": 0.4})}
    )
    run = RunDir(str(tmp_path / "run"))
    with pytest.raises(ShardFailedError, match=r"(?s)features shard-00001: 1/2 images failed.*zz_broken\.png"):
        run_pipeline_local(strict, run.root, stages=["plan", "features"])
    assert run.shard_result("features", "shard-00001") is None  # no done-marker for a failed shard
    features = {s.stage: s for s in run_status(run)}["features"]
    assert "zz_broken.png" in features.errors["shard-00001"]

    lenient = strict.model_copy(update={"orchestration": strict.orchestration.model_copy(
        update={"max_failure_rate": 0.5})})
    manifest = run_pipeline_local(lenient, run.root, stages=["plan", "features"])["features"]
    assert [(f.image_id, f.file_name, f.stage) for f in manifest.failures] == [(4, "zz_broken.png", "features")]
    status = {s.stage: s for s in run_status(run)}["features"]
    assert status.complete and status.errors == {} and status.failures[0]["file_name"] == "zz_broken.png"


def test_unknown_stage_and_missing_upstream_are_clear_errors(tmp_path, tiny_pipeline_config):
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline_local(tiny_pipeline_config, str(tmp_path / "run"), stages=["featurez"])
    with pytest.raises(FileNotFoundError, match="u2seg stage plan"):
        run_pipeline_local(tiny_pipeline_config, str(tmp_path / "run"), stages=["features"])
    assert not os.path.exists(tmp_path / "run" / "features" / "manifest.json")


def test_global_key_ignores_the_order_shards_finished_in():
    stage = StageRun(STAGES["merge"], RunDir("unused"), PipelineConfig.demo(), {"cluster": "c"})
    first = ShardResult(stage="merge", shard="shard-00000", n_images=1)
    second = ShardResult(stage="merge", shard="shard-00001", n_images=2)
    assert stage.global_key([first, second]) == stage.global_key([second, first]) != stage.global_key([first])
