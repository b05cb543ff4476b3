"""The `u2seg` command line: help of every command, status of a run, stage, synth, show, evaluate."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from fault_injection import FAULT_ENV, InjectedFault

from flows.cli import app
from u2seg_core.local_runner import run_pipeline_local
from u2seg_core.rundir import RunDir
from u2seg_core.steps import shard_refs

WIDE = {"COLUMNS": "220"}
COMMANDS = ["run", "stage", "features", "status", "synth", "show", "evaluate"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_pipeline_config):
    run_dir = str(tmp_path_factory.mktemp("cli") / "demo")
    run_pipeline_local(tiny_pipeline_config, run_dir)
    return run_dir


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_every_command_has_help(command):
    result = CliRunner().invoke(app, [command, "--help"] if command else ["--help"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Usage: " in result.output
    if command is None:
        assert all(name in result.output for name in COMMANDS)


def test_status_shows_done_shards_and_failures(tmp_path, tiny_pipeline_config, monkeypatch):
    run_dir = str(tmp_path / "run")
    run_pipeline_local(tiny_pipeline_config, run_dir, stages=["plan"])
    names = [ref.name for ref in shard_refs(RunDir(run_dir))]
    monkeypatch.setenv(FAULT_ENV, f"features:{names[1]}")
    with pytest.raises(InjectedFault):
        run_pipeline_local(tiny_pipeline_config, run_dir, stages=["features"])

    result = CliRunner().invoke(app, ["status", run_dir, "--shards"], env=WIDE)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    plan = next(line for line in lines if "│ plan" in line)
    features = next(line for line in lines if "│ features" in line)
    assert "complete" in plan and "failed" in features and f"1/{len(names)}" in features
    assert f"plan: n_shards={len(names)}, n_images=6" in result.output and "n_ignored=0" in result.output
    assert any(f"features {names[1]} failed" in line and "injected" in line for line in lines)
    grid = next(line for line in lines if f"│ {names[1]}" in line)
    assert "error" in grid
    assert "done" in next(line for line in lines if f"│ {names[0]}" in line)


def test_stage_runs_one_stage_through_prefect(finished_run, prefect_api):
    result = CliRunner().invoke(app, ["stage", "cluster", "--run", finished_run], env=WIDE)
    assert result.exit_code == 0, result.output
    assert RunDir(finished_run).has_stage("cluster")
    missing = CliRunner().invoke(app, ["stage", "maskcut", "--run", finished_run + "-missing"], env=WIDE)
    assert missing.exit_code == 2 and "run.json" in missing.output


def test_synth_writes_the_dataset(tmp_path):
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "data"), "--n", "2", "--size", "64"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "data" / "images").iterdir()) == ["000001.png", "000002.png"]
    assert (tmp_path / "data" / "annotations" / "panoptic.json").exists()


def test_show_writes_an_overlay(finished_run, tmp_path):
    out = tmp_path / "shown.png"
    result = CliRunner().invoke(app, ["show", finished_run, "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")
    unknown = CliRunner().invoke(app, ["show", finished_run, "999"])
    assert unknown.exit_code == 1 and "999" in unknown.output


def test_evaluate_predictions_against_ground_truth(finished_run, tmp_path):
    run = RunDir(finished_run)
    result = CliRunner().invoke(
        app, ["evaluate", "--predictions", finished_run, "--out", str(tmp_path / "ev")], env=WIDE,
    )  # a run: its merge stage against its synthetic ground truth, as the evaluate stage
    assert result.exit_code == 0, result.output
    pq = run.stage_manifest("evaluate").summary["PQ"]
    assert f"{pq:.2f}" in next(line for line in result.output.splitlines() if "u2seg" in line)
    assert (tmp_path / "ev" / "report.json").exists()
    folder = CliRunner().invoke(app, ["evaluate", "--predictions", run.url("merge"), "--out", str(tmp_path / "st")])
    assert folder.exit_code == 0 and "no ground truth" in folder.output  # a folder alone: statistics only
