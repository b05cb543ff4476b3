"""Prefect flows: a new flow run resumes a failed one from cached shards; a config change recomputes only the
changed stage and its downstream stages (asserted on task-run states read back through the Prefect API)."""

from __future__ import annotations

import shutil

import pytest

from flows.pipeline import pipeline_flow
from u2seg_core.pipeline import FAULT_ENV, run_pipeline_local
from u2seg_core.rundir import RunDir

STAGES = ["plan", "features", "stego"]
def shard_names(stage: str, n: int = 3) -> list[str]:
    return [f"{stage}-shard-{i:05d}" for i in range(n)]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_pipeline_config, prefect_api, task_states):
    """A run whose first flow run fails in features shard-00001, then a new flow run; plus a clean run."""
    root = tmp_path_factory.mktemp("resume")
    run_dir = str(root / "run")
    mp = pytest.MonkeyPatch()
    mp.setenv(FAULT_ENV, "features:shard-00001")
    failed = pipeline_flow(run_dir=run_dir, config=tiny_pipeline_config, stages=STAGES, return_state=True)
    mp.undo()
    failed_states = task_states(failed.state_details.flow_run_id)
    resumed = pipeline_flow(run_dir=run_dir, config=tiny_pipeline_config, stages=STAGES, return_state=True)
    run_pipeline_local(tiny_pipeline_config, str(root / "clean"), stages=STAGES)
    return {
        "root": root, "failed": failed, "failed_states": failed_states,
        "resumed": resumed, "resumed_states": task_states(resumed.state_details.flow_run_id),
    }


def test_new_flow_run_resumes_from_cached_shards(resumed_run):
    failed, states = resumed_run["failed"], resumed_run["failed_states"]
    assert failed.is_failed() and "features shard-00001" in failed.message
    assert states["features-shard-00001"] == "Failed"
    assert states["features-shard-00000"] == states["features-shard-00002"] == "Completed"
    assert not any(name.startswith("stego") for name in states)  # the failed stage stopped the pipeline

    assert resumed_run["resumed"].is_completed()
    states = resumed_run["resumed_states"]
    assert states["plan-plan_step"] == "Cached"
    assert states["features-shard-00000"] == states["features-shard-00002"] == "Cached"
    assert states["features-shard-00001"] == "Completed"
    assert states["stego-train_head"] == "Completed"
    assert [states[name] for name in shard_names("stego")] == ["Completed"] * 3


def test_resumed_outputs_are_byte_identical_to_a_clean_run(resumed_run, run_outputs):
    root = resumed_run["root"]
    resumed, clean = run_outputs(root / "run"), run_outputs(root / "clean")
    assert any(name.startswith("store.zarr/features/shard-00001/") for name in clean)
    assert any(name.startswith("stego/maps/") for name in clean)
    assert sorted(resumed) == sorted(clean)
    assert [name for name in clean if resumed[name] != clean[name]] == []


def test_config_change_recomputes_that_stage_and_its_downstream_only(
    resumed_run, tiny_pipeline_config, task_states
):
    run_dir = str(resumed_run["root"] / "changed")
    shutil.copytree(resumed_run["root"] / "run", run_dir)
    features = tiny_pipeline_config.features
    changed = tiny_pipeline_config.model_copy(
        update={"features": features.model_copy(
            update={"backbone": features.backbone.model_copy(update={"batch_size": 3})})}
    )
    state = pipeline_flow(run_dir=run_dir, config=changed, stages=STAGES, return_state=True)
    assert state.is_completed()
    states = task_states(state.state_details.flow_run_id)
    assert states["plan-plan_step"] == "Cached"  # upstream of the change: untouched
    assert [states[n] for n in shard_names("features")] == ["Completed"] * 3  # the changed stage
    assert states["stego-train_head"] == "Completed"  # downstream: its upstream manifest hash changed
    assert [states[n] for n in shard_names("stego")] == ["Completed"] * 3
    assert RunDir(run_dir).stage_manifest("features").config["backbone"]["batch_size"] == 3

    again = pipeline_flow(run_dir=run_dir, config=changed, stages=STAGES, return_state=True)
    again_states = task_states(again.state_details.flow_run_id)
    assert set(again_states.values()) == {"Cached"}, sorted(again_states.items())


def test_refresh_forces_one_stage(resumed_run, tiny_pipeline_config, task_states):
    run_dir = str(resumed_run["root"] / "run")
    state = pipeline_flow(
        run_dir=run_dir, config=tiny_pipeline_config, stages=["plan", "features"], refresh=["features"],
        return_state=True,
    )
    states = task_states(state.state_details.flow_run_id)
    assert states["plan-plan_step"] == "Cached"
    assert [states[n] for n in shard_names("features")] == ["Completed"] * 3
