"""Stage flows on Dask: a worker killed mid-run loses nothing on re-run; GPU-stage tasks land on GPU workers;
the deploy/ cluster specs declare what they promise."""

from __future__ import annotations

import os

import numpy as np
import pytest
import zarr
from distributed import Client, Nanny, Scheduler, SpecCluster, get_task_stream

from fault_injection import FAULT_ENV, in_dask_workers

from flows.pipeline import pipeline_flow
from u2seg_core.local_runner import run_pipeline_local
from u2seg_core.rundir import RunDir
from u2seg_core.steps import shard_refs

pytestmark = pytest.mark.slow


def on_dask(cfg, address: str | None = None):
    """`cfg` on Dask: the scheduler at `address`, else a local cluster of `max_workers` processes (deploy/local_cpu)."""
    return cfg.model_copy(update={"orchestration": cfg.orchestration.model_copy(
        update={"runner": "dask", "dask_address": address})})


def test_killed_worker_loses_nothing_on_rerun(tmp_path, tiny_pipeline_config, prefect_api, run_outputs, monkeypatch):
    guard = tmp_path / "killed-once"
    run_dir = str(tmp_path / "run")
    run_pipeline_local(tiny_pipeline_config, run_dir, stages=["plan"])
    names = [ref.name for ref in shard_refs(RunDir(run_dir))]
    monkeypatch.setenv(FAULT_ENV, f"features:{names[1]}:exit:{guard}")  # inherited by the worker processes
    cfg = on_dask(tiny_pipeline_config)  # each flow run starts a LocalCluster of 2 worker processes
    with in_dask_workers():  # the worker processes load the test-only hook
        pipeline_flow(run_dir=run_dir, config=cfg, stages=["plan", "features"], return_state=True)
    assert guard.exists()  # a worker process really died inside features shard-00001
    rerun = pipeline_flow(run_dir=run_dir, config=cfg, stages=["plan", "features"], return_state=True)
    assert rerun.is_completed(), rerun.message
    monkeypatch.delenv(FAULT_ENV)

    run = RunDir(run_dir)
    markers = sorted(os.listdir(run.url("features", "_shards")))
    assert markers == [f"{name}.json" for name in names]
    store = zarr.open_group(run.store, mode="r")
    for shard in run.shards():  # every image exactly once, in shard order
        ids = store[f"features/{shard.name}/image_ids"][:]
        np.testing.assert_array_equal(ids, [im.image_id for im in shard.images])
    run_pipeline_local(tiny_pipeline_config, str(tmp_path / "clean"), stages=["plan", "features"])
    resumed, clean = run_outputs(tmp_path / "run"), run_outputs(tmp_path / "clean")
    assert sorted(resumed) == sorted(clean)
    assert [name for name in clean if resumed[name] != clean[name]] == []


def test_gpu_stage_tasks_run_only_on_workers_that_declare_a_gpu(tmp_path, tiny_pipeline_config, prefect_api):
    run_dir = str(tmp_path / "run")
    run_pipeline_local(tiny_pipeline_config, run_dir, stages=["plan"])
    workers = {
        "gpu-0": {"cls": Nanny, "options": {"nthreads": 1, "resources": {"GPU": 1}}},
        "cpu-0": {"cls": Nanny, "options": {"nthreads": 1}},
    }
    scheduler = {"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    with SpecCluster(workers=workers, scheduler=scheduler) as cluster, Client(cluster) as client:
        names = {addr: w["name"] for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}
        with get_task_stream(client) as stream:
            state = pipeline_flow(
                run_dir=run_dir, config=on_dask(tiny_pipeline_config, cluster.scheduler_address),
                stages=["features"], return_state=True,
            )
        assert state.is_completed(), state.message
    used = [names[record["worker"]] for record in stream.data]
    assert len(used) == len(shard_refs(RunDir(run_dir))) and set(used) == {"gpu-0"}


def test_local_cuda_spec_pins_one_gpu_per_worker():
    from deploy.local_cuda import make_cluster

    with make_cluster(gpus=["0", "1"], dashboard_address=":0") as cluster, Client(cluster) as client:
        info = client.scheduler_info(n_workers=-1)["workers"].values()
        assert sorted(w["resources"].get("GPU") for w in info) == [1, 1]
        visible = client.run(lambda: os.environ["CUDA_VISIBLE_DEVICES"])
        assert sorted(v.split(",")[0] for v in visible.values()) == ["0", "1"]


def test_slurm_spec_asks_for_a_gpu_per_job():
    from deploy.slurm import make_cluster

    cluster = make_cluster(scheduler_options={"dashboard_address": ":0"}, adapt=None)
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    assert "#SBATCH --gres=gpu:1" in script
    assert "--resources GPU=1" in script and "--lifetime 225m" in script
