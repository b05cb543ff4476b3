"""The executor-independent pipeline layer (no Prefect): cache keys, done-markers, failure threshold, status."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from fault_injection import FAULT_ENV, InjectedFault
from PIL import Image

from u2seg_core import storage
from u2seg_core.cache_keys import code_version, global_cache_key, shard_cache_key
from u2seg_core.config import PipelineConfig, SourceConfig
from u2seg_core.local_runner import run_pipeline_local
from u2seg_core.manifest import GlobalResult, ShardResult
from u2seg_core.registry import STAGES, downstream_of
from u2seg_core.rundir import RunDir
from u2seg_core.stage_run import StageRun
from u2seg_core.status import run_status
from u2seg_core.steps import ShardFailedError, shard_refs


def _marker_mtimes(run: RunDir, stage: str) -> dict[str, int]:
    folder = Path(run.url(stage, "_shards"))
    return {p.stem: p.stat().st_mtime_ns for p in sorted(folder.glob("shard-*.json"))}


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_cache_keys_change_with_their_own_inputs_only():
    cfg = PipelineConfig.demo()
    spec, upstream = STAGES["maskcut"], {"plan": "p1"}
    key = shard_cache_key(spec, cfg, "shard-00003", "", upstream)
    assert key.startswith("maskcut-shard-00003-")
    assert key == shard_cache_key(spec, PipelineConfig.demo(), "shard-00003", "", {"plan": "p1"})

    other_stage_cfg = cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"k": 5})})
    own_cfg = cfg.model_copy(update={"maskcut": cfg.maskcut.model_copy(update={"tau": 0.2})})
    assert shard_cache_key(spec, other_stage_cfg, "shard-00003", "", upstream) == key
    changed = {
        shard_cache_key(spec, own_cfg, "shard-00003", "", upstream),
        shard_cache_key(spec, cfg, "shard-00003", "bbbb", upstream),
        shard_cache_key(spec, cfg, "shard-00003", "", {"plan": "p2"}),
        shard_cache_key(spec, cfg, "shard-00003", "", upstream, global_hash="g"),
    }
    assert key not in changed and len(changed) == 4
    merge = STAGES["merge"]
    assert global_cache_key(merge, cfg, {"cluster": "c"}) != global_cache_key(merge, cfg, {"cluster": "c"}, ["h"])


def test_output_changing_constants_and_code_version_enter_the_keys():
    cfg = PipelineConfig.demo()
    maskcut, stego = STAGES["maskcut"], STAGES["stego"]
    key = shard_cache_key(maskcut, cfg, "shard-00000", "", {})
    for update in ({"max_dim": 64}, {"residual_tol": 1e-6}, {"seed": 1}):
        krylov = cfg.maskcut.krylov.model_copy(update=update)
        changed = cfg.model_copy(update={"maskcut": cfg.maskcut.model_copy(update={"krylov": krylov})})
        assert shard_cache_key(maskcut, changed, "shard-00000", "", {}) != key, update
    thresholds = cfg.model_copy(update={"maskcut": cfg.maskcut.model_copy(update={"max_previous_iou": 0.6})})
    assert shard_cache_key(maskcut, thresholds, "shard-00000", "", {}) != key
    crop = cfg.model_copy(update={"stego": cfg.stego.model_copy(update={"crop_ratio": 0.4})})
    assert global_cache_key(stego, crop, {}) != global_cache_key(stego, cfg, {})

    assert code_version(maskcut).startswith(maskcut.version + "-")
    assert maskcut.step_modules == ("u2seg_core.maskcut.stage",)
    bumped = type(maskcut)(**{**maskcut.__dict__, "version": "99"})
    assert code_version(bumped) != code_version(maskcut)


def test_training_metrics_do_not_enter_the_manifest_hash():
    base = GlobalResult(stage="stego", cache_key="k", outputs={"head": "stego/head.pt"}, summary={"steps": 4})
    other_loss = base.model_copy(update={"metrics": {"final_loss": 0.123}, "seconds": 9.0})
    assert other_loss.hash == base.hash
    assert base.model_copy(update={"summary": {"steps": 5}}).hash != base.hash


def test_downstream_stages_in_pipeline_order():
    assert downstream_of("cluster") == ["merge", "train", "predict", "evaluate"]
    assert downstream_of("plan")[:3] == ["features", "maskcut", "cluster"]


def test_local_run_skips_done_shards_and_recomputes_lost_or_truncated_outputs(tmp_path, tiny_pipeline_config):
    run = RunDir(str(tmp_path / "run"))
    manifests = run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan", "features"])
    names = [ref.name for ref in shard_refs(run)]
    assert manifests["plan"].summary["n_shards"] == len(names) >= 2
    assert manifests["plan"].summary["n_images"] == 6
    assert [s.shard for s in manifests["features"].shards] == names
    assert storage.read_json(run.run_manifest)["stages"]["features"] == manifests["features"].hash
    marker = run.shard_result("features", names[0])
    assert marker.files and all(os.path.getsize(run.url(rel)) == size for rel, size in marker.files.items())
    store = tmp_path / "run" / "store.zarr" / "features"
    before, outputs = _marker_mtimes(run, "features"), _tree_bytes(store)

    again = run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan", "features"])
    assert _marker_mtimes(run, "features") == before  # nothing recomputed
    assert again["features"].hash == manifests["features"].hash

    lost, truncated = names[0], names[-1]
    os.remove(run.url(next(rel for rel in run.shard_result("features", lost).files if "/tokens/c/" in rel)))
    with open(run.url(next(iter(run.shard_result("features", truncated).files))), "r+b") as f:
        f.truncate(3)
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"])
    after = _marker_mtimes(run, "features")
    assert {name for name in names if after[name] != before[name]} == {lost, truncated}
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
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["plan"])
    names = [ref.name for ref in shard_refs(run)]
    monkeypatch.setenv(FAULT_ENV, f"features:{names[1]}")
    with pytest.raises(InjectedFault, match=f"features {names[1]}"):
        run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"])
    features = {s.stage: s for s in run_status(run)}["features"]
    assert not features.complete and features.done == names[:1]  # the sequential runner stops here
    assert list(features.errors) == [names[1]] and "injected" in features.errors[names[1]]

    monkeypatch.delenv(FAULT_ENV)
    run_pipeline_local(tiny_pipeline_config, run.root, stages=["features"])
    features = {s.stage: s for s in run_status(run)}["features"]
    assert features.complete and features.done == names
    assert features.errors == {}


def _write_folder_source(folder: Path, n_good: int) -> None:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "zz_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")


def test_shard_over_the_failure_threshold_fails_loudly_with_the_list(tmp_path, tiny_pipeline_config):
    images = tmp_path / "images"
    _write_folder_source(images, n_good=3)
    source = SourceConfig(uri=str(images), shard_size=2)
    strict = tiny_pipeline_config.model_copy(
        update={"source": source, "orchestration": tiny_pipeline_config.orchestration.model_copy(
            update={"max_failure_rate": 0.2})}
    )
    run = RunDir(str(tmp_path / "run"))
    with pytest.raises(ShardFailedError, match=r"(?s)features shard-\d{5}: 1/\d images failed.*zz_broken\.png"):
        run_pipeline_local(strict, run.root, stages=["plan", "features"])
    broken_shard = next(s for s in run.shards() if any(im.file_name == "zz_broken.png" for im in s.images))
    assert run.shard_result("features", broken_shard.name) is None  # no done-marker for a failed shard
    features = {s.stage: s for s in run_status(run)}["features"]
    assert "zz_broken.png" in features.errors[broken_shard.name]

    lenient = strict.model_copy(update={"orchestration": strict.orchestration.model_copy(
        update={"max_failure_rate": 1.0})})
    manifest = run_pipeline_local(lenient, run.root, stages=["plan", "features"])["features"]
    broken_id = next(im.image_id for im in broken_shard.images if im.file_name == "zz_broken.png")
    assert [(f.image_id, f.file_name, f.stage) for f in manifest.failures] == [(broken_id, "zz_broken.png", "features")]
    status = {s.stage: s for s in run_status(run)}["features"]
    assert status.complete and status.errors == {} and status.failures[0]["file_name"] == "zz_broken.png"


def test_unknown_stage_and_missing_upstream_are_clear_errors(tmp_path, tiny_pipeline_config):
    with pytest.raises(ValueError, match="unknown stage"):
        run_pipeline_local(tiny_pipeline_config, str(tmp_path / "run"), stages=["featurez"])
    with pytest.raises(FileNotFoundError, match="u2seg stage plan"):
        run_pipeline_local(tiny_pipeline_config, str(tmp_path / "run"), stages=["features"])
    assert not os.path.exists(tmp_path / "run" / "features" / "manifest.json")


def test_global_key_ignores_the_order_shards_finished_in():
    stage = StageRun(STAGES["merge"], RunDir("unused"), PipelineConfig.demo(), {})
    first = ShardResult(stage="merge", shard="shard-00000", n_images=1)
    second = ShardResult(stage="merge", shard="shard-00001", n_images=2)
    assert stage.global_key([first, second]) == stage.global_key([second, first]) != stage.global_key([first])


def test_k_above_the_number_of_masks_is_a_warning_in_the_manifest_and_status(tmp_path, tiny_pipeline_config):
    from typer.testing import CliRunner

    from flows.cli import app

    cfg = tiny_pipeline_config.model_copy(update={"cluster": tiny_pipeline_config.cluster.model_copy(update={"k": 50})})
    run = RunDir(str(tmp_path / "run"))
    manifest = run_pipeline_local(cfg, run.root, stages=["plan", "features", "maskcut", "cluster"])["cluster"]
    n_masks = manifest.summary["n_points"]
    assert n_masks < 50
    assert manifest.global_result.warnings == [
        f"cluster.k=50 is more than the {n_masks} MaskCut masks of the run: at least {50 - n_masks} clusters stay "
        "empty; lower cluster.k or add images"
    ]
    output = CliRunner().invoke(app, ["status", run.root], env={"COLUMNS": "250"}).output
    assert "cluster warning: cluster.k=50 is more than" in output


def test_a_changed_image_invalidates_only_its_shard(tmp_path, tiny_pipeline_config):
    images = tmp_path / "images"
    _write_folder_source(images, n_good=8)
    (images / "zz_broken.png").unlink()
    cfg = tiny_pipeline_config.model_copy(update={"source": SourceConfig(uri=str(images), shard_size=2)})
    run = RunDir(str(tmp_path / "run"))
    run_pipeline_local(cfg, run.root, stages=["plan", "features"])
    before = {stage: _marker_mtimes(run, stage) for stage in ("plan", "features")}
    Image.new("RGB", (48, 40), (9, 9, 9)).save(images / "img3.png")
    run_pipeline_local(cfg, run.root, stages=["plan", "features"])
    after = {stage: _marker_mtimes(run, stage) for stage in ("plan", "features")}
    shard = next(s.name for s in run.shards() if any(im.file_name == "img3.png" for im in s.images))
    for stage in ("plan", "features"):
        assert {name for name in after[stage] if after[stage][name] != before[stage][name]} == {shard}, stage
