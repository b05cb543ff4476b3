"""The pipeline with its input images and its run directory (and Prefect's result records) on S3 (moto)."""

from __future__ import annotations

import pytest

from flows.pipeline import pipeline_flow
from u2seg_core import storage
from u2seg_core.config import SourceConfig
from u2seg_core.synth import generate_dataset

pytestmark = pytest.mark.slow


def test_pipeline_on_s3_completes_and_resumes_from_s3(
    tmp_path, s3_endpoint, s3_bucket, tiny_pipeline_config, task_states
):
    # s3fs instances cached as in production (the fixture's skip_instance_cache opens a client per call)
    storage.register_storage_options(s3_bucket, {"client_kwargs": {"endpoint_url": s3_endpoint}})
    local = tmp_path / "synthetic"
    generate_dataset(str(local), tiny_pipeline_config.source.synthetic)
    fs, _ = storage.get_fs(s3_bucket)
    fs.put(str(local) + "/", f"{s3_bucket}/synthetic/", recursive=True)
    source = SourceConfig(
        uri=f"{s3_bucket}/synthetic/annotations/instances.json", kind="coco",
        image_root=f"{s3_bucket}/synthetic/images", shard_size=2,
    )
    cfg = tiny_pipeline_config.model_copy(
        update={"source": source, "evaluate": tiny_pipeline_config.evaluate.model_copy(
            update={"ground_truth": f"{s3_bucket}/synthetic"})}
    )
    run_dir = f"{s3_bucket}/runs/demo"

    first = pipeline_flow(run_dir=run_dir, config=cfg, return_state=True)
    assert first.is_completed(), first.message
    shards = [f"shard-{index:05d}.json" for index, _ in storage.read_json(f"{run_dir}/plan/manifest.json")["summary"]["shards"]]
    assert storage.listdir(f"{run_dir}/features/_shards") == shards
    assert storage.exists(f"{run_dir}/merge/panoptic.json") and storage.exists(f"{run_dir}/run.json")
    assert "PQ" in storage.read_json(f"{run_dir}/evaluate/manifest.json")["summary"]
    records = storage.listdir(f"{run_dir}/.prefect/results")
    assert f"features-{shards[1].removesuffix('.json')}-" in " ".join(records)  # result records live in the bucket too

    second = pipeline_flow(run_dir=run_dir, config=cfg, return_state=True)
    assert second.is_completed()
    recomputed = {name: s for name, s in task_states(second.state_details.flow_run_id).items() if s != "Cached"}
    assert recomputed == {"plan-plan_step": "Completed"}  # plan re-lists the source on every run
