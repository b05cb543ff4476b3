"""Prefect flows: a new flow run resumes a failed one from cached shards; a config change recomputes only the
changed stage and its downstream stages (asserted on task-run states read back through the Prefect API)."""

from __future__ import annotations

import shutil

import pytest

from flows.pipeline import pipeline_flow
from u2seg_core.pipeline import FAULT_ENV, run_pipeline_local
from u2seg_core.rundir import RunDir

pytestmark = pytest.mark.slow


def shard_states(states: dict[str, str], stage: str, n: int = 3) -> list[str]:
    return [states[f"{stage}-shard-{i:05d}"] for i in range(n)]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_pipeline_config, prefect_api, task_states):
    """The whole pipeline: a first flow run fails in maskcut shard-00001, then a new flow run; plus a clean run."""
    root = tmp_path_factory.mktemp("resume")
    run_dir = str(root / "run")
    mp = pytest.MonkeyPatch()
    mp.setenv(FAULT_ENV, "maskcut:shard-00001")
    failed = pipeline_flow(run_dir=run_dir, config=tiny_pipeline_config, return_state=True)
    mp.undo()
    resumed = pipeline_flow(run_dir=run_dir, config=tiny_pipeline_config, return_state=True)
    clean = run_pipeline_local(tiny_pipeline_config, str(root / "clean"))
    return {
        "root": root, "clean": clean,
        "failed": failed, "failed_states": task_states(failed.state_details.flow_run_id),
        "resumed": resumed, "resumed_states": task_states(resumed.state_details.flow_run_id),
    }


def test_new_flow_run_resumes_from_cached_shards(resumed_run):
    failed, states = resumed_run["failed"], resumed_run["failed_states"]
    assert failed.is_failed() and "maskcut shard-00001" in failed.message
    assert shard_states(states, "features") == ["Completed"] * 3
    assert shard_states(states, "maskcut") == ["Completed", "Failed", "Completed"]
    assert not any(name.startswith(("cluster", "stego", "merge", "evaluate")) for name in states)

    assert resumed_run["resumed"].is_completed()
    states = resumed_run["resumed_states"]
    assert states["plan-plan_step"] == "Cached"
    assert shard_states(states, "features") == ["Cached"] * 3
    assert shard_states(states, "maskcut") == ["Cached", "Completed", "Cached"]
    for step in ("cluster-fit_centroids", "stego-train_head", "merge-finalize", "evaluate-evaluate_run"):
        assert states[step] == "Completed"
    for stage in ("cluster", "stego", "merge"):
        assert shard_states(states, stage) == ["Completed"] * 3


def test_resumed_outputs_are_byte_identical_to_a_clean_run(resumed_run, run_outputs):
    root = resumed_run["root"]
    resumed, clean = run_outputs(root / "run"), run_outputs(root / "clean")
    for produced in ("store.zarr/maskcut/shard-00001/", "stego/maps/", "merge/panoptic/", "evaluate/overlays/"):
        assert any(name.startswith(produced) for name in clean), produced
    assert sorted(resumed) == sorted(clean)
    assert [name for name in clean if resumed[name] != clean[name]] == []
    metrics = RunDir(str(root / "run")).stage_manifest("evaluate").summary
    assert metrics == resumed_run["clean"]["evaluate"].summary and "PQ" in metrics


def test_config_change_recomputes_that_stage_and_its_downstream_only(
    resumed_run, tiny_pipeline_config, task_states
):
    run_dir = str(resumed_run["root"] / "changed")
    shutil.copytree(resumed_run["root"] / "run", run_dir)
    maskcut = tiny_pipeline_config.maskcut
    changed = tiny_pipeline_config.model_copy(
        update={"maskcut": maskcut.model_copy(update={"backbone": maskcut.backbone.model_copy(update={"batch_size": 3})})}
    )
    state = pipeline_flow(run_dir=run_dir, config=changed, return_state=True)
    assert state.is_completed(), state.message
    states = task_states(state.state_details.flow_run_id)
    # not downstream of maskcut: untouched
    assert states["plan-plan_step"] == states["stego-train_head"] == "Cached"
    assert shard_states(states, "features") == shard_states(states, "stego") == ["Cached"] * 3
    # maskcut and everything downstream of it: recomputed
    assert shard_states(states, "maskcut") == ["Completed"] * 3
    assert states["cluster-fit_centroids"] == states["merge-finalize"] == states["evaluate-evaluate_run"] == "Completed"
    assert shard_states(states, "cluster") == shard_states(states, "merge") == ["Completed"] * 3
    assert RunDir(run_dir).stage_manifest("maskcut").config["backbone"]["batch_size"] == 3


def test_refresh_forces_one_stage(resumed_run, tiny_pipeline_config, task_states):
    state = pipeline_flow(
        run_dir=str(resumed_run["root"] / "run"), config=tiny_pipeline_config, stages=["plan", "features"],
        refresh=["features"], return_state=True,
    )
    states = task_states(state.state_details.flow_run_id)
    assert states["plan-plan_step"] == "Cached"
    assert shard_states(states, "features") == ["Completed"] * 3
