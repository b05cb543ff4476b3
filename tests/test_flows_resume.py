"""Prefect flows: a new flow run resumes a failed one from cached shards; a config change recomputes only the
changed stage and its downstream stages (asserted on task-run states read back through the Prefect API)."""

from __future__ import annotations

import shutil

import pytest

from fault_injection import FAULT_ENV

from flows.pipeline import pipeline_flow
from u2seg_core.local_runner import run_pipeline_local
from u2seg_core.rundir import RunDir
from u2seg_core.steps import shard_refs

pytestmark = pytest.mark.slow


def shard_states(states: dict[str, str], stage: str) -> list[str]:
    """States of the stage's shard tasks, in shard order."""
    return [state for name, state in sorted(states.items()) if name.startswith(f"{stage}-shard-")]


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, tiny_pipeline_config, prefect_api, task_states):
    """The whole pipeline: a first flow run fails in maskcut shard-00001, then a new flow run; plus a clean run."""
    root = tmp_path_factory.mktemp("resume")
    run_dir = str(root / "run")
    run_pipeline_local(tiny_pipeline_config, run_dir, stages=["plan"])
    failing = shard_refs(RunDir(run_dir))[1].name
    mp = pytest.MonkeyPatch()
    mp.setenv(FAULT_ENV, f"maskcut:{failing}")
    failed = pipeline_flow(run_dir=run_dir, config=tiny_pipeline_config, return_state=True)
    mp.undo()
    resumed = pipeline_flow(run_dir=run_dir, config=tiny_pipeline_config, return_state=True)
    clean = run_pipeline_local(tiny_pipeline_config, str(root / "clean"))
    return {
        "root": root, "clean": clean, "failing": failing, "n": len(shard_refs(RunDir(run_dir))),
        "failed": failed, "failed_states": task_states(failed.state_details.flow_run_id),
        "resumed": resumed, "resumed_states": task_states(resumed.state_details.flow_run_id),
    }


def test_new_flow_run_resumes_from_cached_shards(resumed_run):
    failed, states, n = resumed_run["failed"], resumed_run["failed_states"], resumed_run["n"]
    one_failed = ["Completed", "Failed"] + ["Completed"] * (n - 2)
    assert failed.is_failed() and f"maskcut {resumed_run['failing']}" in failed.message
    assert shard_states(states, "features") == ["Completed"] * n
    assert shard_states(states, "maskcut") == one_failed
    assert not any(name.startswith(("cluster", "stego", "merge", "evaluate")) for name in states)

    assert resumed_run["resumed"].is_completed()
    states = resumed_run["resumed_states"]
    assert states["plan-plan_step"] == "Completed"  # plan re-lists the source on every run
    assert shard_states(states, "plan") == shard_states(states, "features") == ["Cached"] * n
    assert shard_states(states, "maskcut") == ["Cached", "Completed"] + ["Cached"] * (n - 2)
    for step in ("cluster-fit_centroids", "stego-train_head", "merge-finalize", "evaluate-evaluate_run"):
        assert states[step] == "Completed"
    # cluster / merge keys chain on the maskcut shard they read; stego does not read maskcut (already done)
    assert shard_states(states, "cluster") == shard_states(states, "merge") == ["Completed"] * n
    assert shard_states(states, "stego") == ["Completed"] * n


def test_resumed_outputs_are_byte_identical_to_a_clean_run(resumed_run, run_outputs):
    root = resumed_run["root"]
    resumed, clean = run_outputs(root / "run"), run_outputs(root / "clean")
    for produced in (f"store.zarr/maskcut/{resumed_run['failing']}/", "stego/maps/", "merge/panoptic/", "evaluate/"):
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
    n = resumed_run["n"]
    # not downstream of maskcut: untouched
    assert states["stego-train_head"] == "Cached"
    assert shard_states(states, "features") == shard_states(states, "stego") == ["Cached"] * n
    # maskcut and everything downstream of it: recomputed
    assert shard_states(states, "maskcut") == ["Completed"] * n
    assert states["cluster-fit_centroids"] == states["merge-finalize"] == states["evaluate-evaluate_run"] == "Completed"
    assert shard_states(states, "cluster") == shard_states(states, "merge") == ["Completed"] * n
    assert RunDir(run_dir).stage_manifest("maskcut").config["backbone"]["batch_size"] == 3


def test_refresh_forces_one_stage(resumed_run, tiny_pipeline_config, task_states):
    state = pipeline_flow(
        run_dir=str(resumed_run["root"] / "run"), config=tiny_pipeline_config, stages=["plan", "features"],
        refresh=["features"], return_state=True,
    )
    states = task_states(state.state_details.flow_run_id)
    assert shard_states(states, "plan") == ["Cached"] * resumed_run["n"]
    assert shard_states(states, "features") == ["Completed"] * resumed_run["n"]
