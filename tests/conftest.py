"""Shared pytest fixtures (append-only: each area adds its fixtures below)."""

from __future__ import annotations

import os
import uuid

import pytest

from u2seg_core import storage

# ---- S3 (moto server) ------------------------------------------------------------------------

_AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a local moto S3 server ("http://127.0.0.1:<port>"), with dummy AWS credentials in the env."""
    from moto.server import ThreadedMotoServer

    saved = {key: os.environ.get(key) for key in _AWS_TEST_ENV}
    os.environ.update(_AWS_TEST_ENV)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket "s3://<name>" whose storage options point at the moto server."""
    import boto3
    import s3fs

    name = f"u2seg-test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=name)
    url = f"s3://{name}"
    storage.register_storage_options(
        url, {"client_kwargs": {"endpoint_url": s3_endpoint}, "skip_instance_cache": True}
    )
    s3fs.S3FileSystem.clear_instance_cache()
    yield url
    s3fs.S3FileSystem.clear_instance_cache()


# ---- planned run directories (cluster / merge / evaluate stage tests) -------------------------


@pytest.fixture
def planned_run(tmp_path):
    """Factory: `planned_run([[ImageRecord, ...], ...])` -> a RunDir whose plan lists those shards."""
    from u2seg_core.manifest import ShardManifest, StageManifest
    from u2seg_core.rundir import RunDir

    def make(shards):
        run = RunDir(str(tmp_path / "run"))
        for index, images in enumerate(shards):
            manifest = ShardManifest(shard_index=index, source="test", images=images)
            storage.write_json(run.shard_manifest_url(index), manifest.model_dump(mode="json"))
        plan = StageManifest(
            stage="plan", stage_version="1", code_version="test", config={}, config_hash="",
            summary={"n_shards": len(shards), "n_images": sum(len(images) for images in shards), "shards": [
                [index, ShardManifest(shard_index=index, source="test", images=images).hash]
                for index, images in enumerate(shards)
            ]},
        )
        storage.write_json(run.stage_manifest_url("plan"), plan.model_dump(mode="json"))
        return run

    return make


# ---- Prefect flows (orchestration tests) ------------------------------------------------------


@pytest.fixture(scope="session")
def prefect_api():
    """A temporary Prefect API server with its own SQLite database, shared by the flow tests."""
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def tiny_pipeline_config():
    """PipelineConfig.demo() shrunk for tests: 6 synthetic 64-px images in 3 shards, 2 worker threads."""
    from u2seg_core.config import PipelineConfig, SynthConfig

    demo = PipelineConfig.demo()
    return demo.model_copy(
        update={
            "source": demo.source.model_copy(update={"shard_size": 2, "synthetic": SynthConfig(n=6, size=64, seed=3)}),
            "features": demo.features.model_copy(update={"resolution": 64}),
            "maskcut": demo.maskcut.model_copy(update={"resolution": 64}),
            "cluster": demo.cluster.model_copy(update={"k": 3, "niter": 10}),
            "stego": demo.stego.model_copy(
                update={"steps": 4, "dim": 8, "n_classes": 3, "batch_size": 2, "inference_resolution": 64,
                        "crf": False, "crop": "none", "train_grid": 8}
            ),
            "evaluate": demo.evaluate.model_copy(
                update={"overlays": 1, "predictions": {"pseudo-labels": "merge"}, "images": "all"}
            ),
            "orchestration": demo.orchestration.model_copy(update={"max_workers": 2, "retry_delay_seconds": 0.1}),
        }
    )


@pytest.fixture(scope="session")
def task_states(prefect_api):
    """`task_states(flow_run_id)` -> {task run name: state name} over a flow run and its subflow runs,
    read through the Prefect API once every task run has reached a final state."""
    import time

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId

    def read(flow_run_id) -> dict[str, str]:
        with get_client(sync_client=True) as client:
            subflows = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id]))
            )
            ids = [flow_run_id] + [run.id for run in subflows]
            subflow_calls = {run.parent_task_run_id for run in subflows}  # the parent's stand-in task runs
            deadline, previous = time.monotonic() + 30, None
            while True:
                runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
                runs = [r for r in runs if r.id not in subflow_calls]
                states = {r.name: r.state.name for r in runs if r.state}
                settled = states == previous and all(r.state and r.state.is_final() for r in runs)
                if settled or time.monotonic() > deadline:
                    return states
                previous = states
                time.sleep(0.3)

    return read


# ---- backbone weights ---------------------------------------------------------------------------

# The test suite never downloads DINO checkpoints (u2seg_core.backbone.weights honours U2SEG_OFFLINE).
os.environ.setdefault("U2SEG_OFFLINE", "1")


@pytest.fixture(scope="session")
def run_outputs():
    """`run_outputs(root)` -> {relative path: bytes} of every data file of a local run directory, without
    run-specific metadata (manifests, markers and evaluation reports carry timings and absolute paths)."""
    from pathlib import Path

    volatile = (
        ".prefect", "_shards", "_global.json", "_errors", "manifest.json", "run.json", "plan/shards",
        "evaluate/report.",
    )

    def read(root) -> dict[str, bytes]:
        files = {}
        for path in sorted(Path(root).rglob("*")):
            rel = path.relative_to(root).as_posix()
            if path.is_file() and not any(part in rel for part in volatile):
                files[rel] = path.read_bytes()
        return files

    return read


# ---- STEGO released checkpoints ------------------------------------------------------------------


@pytest.fixture
def make_released_stego_ckpt():
    """`make(path, dim=9, backbone_dim=32, patch=8, n_classes=27, seed=0)` writes a file in the layout of the
    released STEGO Lightning checkpoints (random values; hparams in a foreign `DictConfig`-like class whose
    module is gone at load time) and returns its state_dict."""
    import sys
    import types
    from collections import OrderedDict

    import torch

    def foreign_module():
        module = types.ModuleType("fake_omegaconf")

        class DictConfig:
            def __init__(self, content):
                self._content = {k: AnyNode(v, self) for k, v in content.items()}
                self._parent = None

            def __getstate__(self):
                return dict(self.__dict__)

        class AnyNode:
            def __init__(self, value, parent):
                self._val = value
                self._parent = parent  # a reference cycle, like omegaconf's nodes

        class ModelCheckpoint:
            pass

        for cls in (DictConfig, AnyNode, ModelCheckpoint):
            cls.__module__ = module.__name__
            cls.__qualname__ = cls.__name__
            setattr(module, cls.__name__, cls)
        return module

    def make(path, dim=9, backbone_dim=32, patch=8, n_classes=27, seed=0):
        g = torch.Generator().manual_seed(seed)
        d = backbone_dim
        shapes = {
            "net.model.cls_token": (1, 1, d),
            "net.model.pos_embed": (1, 785, d),
            "net.model.patch_embed.proj.weight": (d, 3, patch, patch),
            "net.model.patch_embed.proj.bias": (d,),
            "net.model.blocks.0.norm1.weight": (d,),
            "net.model.norm.weight": (d,),
            "net.cluster1.0.weight": (dim, d, 1, 1),
            "net.cluster1.0.bias": (dim,),
            "net.cluster2.0.weight": (d, d, 1, 1),
            "net.cluster2.0.bias": (d,),
            "net.cluster2.2.weight": (dim, d, 1, 1),
            "net.cluster2.2.bias": (dim,),
            "cluster_probe.clusters": (n_classes, dim),
            "linear_probe.weight": (n_classes, dim, 1, 1),
            "linear_probe.bias": (n_classes,),
            "decoder.weight": (d, dim, 1, 1),
            "decoder.bias": (d,),
        }
        state = OrderedDict((k, torch.randn(*s, generator=g)) for k, s in shapes.items())
        module = foreign_module()
        sys.modules[module.__name__] = module
        try:
            cfg = module.DictConfig({"pos_inter_weight": 1.0, "dim": dim, "model_type": "vit_base"})
            torch.save(
                {
                    "epoch": 3,
                    "global_step": 5000,
                    "pytorch-lightning_version": "1.5.10",
                    "state_dict": state,
                    "callbacks": {module.ModelCheckpoint: {"best_model_score": torch.tensor(28.19)}},
                    "optimizer_states": [{"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]}],
                    "lr_schedulers": [],
                    "hparams_name": "kwargs",
                    "hyper_parameters": {"n_classes": n_classes, "cfg": cfg},
                },
                path,
            )
        finally:
            del sys.modules[module.__name__]
        return state

    return make


@pytest.fixture
def single_torch_thread():
    """One intra-op thread for tests of tiny tensors: avoids OpenMP barrier stalls on a loaded machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- CPU threading (maskcut tests) ----------------------------------------------------------


@pytest.fixture
def one_thread():
    """torch and BLAS/LAPACK on one thread for the test (on a busy 2-core machine, multithreaded
    dense algebra spin-waits and runs many times slower)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(threads)


# ---- fault injection (pipeline layer tests) -----------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _fault_injection_hook():
    """Install the test-only U2SEG_FAULT_INJECT step hook (tests/fault_injection.py) in this process."""
    import fault_injection

    fault_injection.install()
    yield


# ---- train stage: a small merged run -------------------------------------------------------------


@pytest.fixture
def merged_run(tmp_path):
    """Factory: `merged_run(n=6, size=64, shard_size=3, empty=(), portrait=())` -> RunDir with a plan and merge
    outputs as the train stage reads them: images with 1-2 coloured rectangles (cluster ids 1..3) on two stuff
    classes (semantic 1, 2; 255 along the top rows), images listed in `empty` without instances, those in
    `portrait` taller than wide."""
    import numpy as np

    from u2seg_core.coco import encode_rle
    from u2seg_core.manifest import ImageRecord, ShardManifest, ShardResult, StageManifest
    from u2seg_core.rundir import RunDir

    def make(n=6, size=64, shard_size=3, empty=(), portrait=(), name="run"):
        run = RunDir(str(tmp_path / name))
        rng = np.random.default_rng(0)
        results = []
        for shard_index, first in enumerate(range(0, n, shard_size)):
            records, images, panoptic, instances = [], [], [], []
            for image_id in range(first + 1, min(first + shard_size, n) + 1):
                h, w = (size + 16, size) if image_id in portrait else (size, size)
                semantic = np.full((h, w), 1, dtype=np.uint8)
                semantic[h // 2:] = 2
                semantic[:2] = 255
                rgb = np.zeros((h, w, 3), dtype=np.uint8)
                rgb[semantic == 1] = (30, 90, 30)
                rgb[semantic == 2] = (90, 60, 20)
                for k in range(0 if image_id in empty else 1 + image_id % 2):
                    y, x = int(rng.integers(4, h // 2)), int(rng.integers(0, w // 2))
                    bh, bw = int(rng.integers(10, h // 2)), int(rng.integers(10, w // 2))
                    mask = np.zeros((h, w), dtype=bool)
                    mask[y:y + bh, x:x + bw] = True
                    cluster = 1 + (image_id + k) % 3
                    rgb[mask] = (60 * cluster, 250 - 60 * cluster, 200)
                    semantic[mask] = 0
                    instances.append({
                        "id": image_id * 100 + k, "image_id": image_id, "category_id": cluster,
                        "segmentation": encode_rle(mask), "bbox": [x, y, bw, bh], "area": int(mask.sum()),
                        "score": 1.0, "iscrowd": 0,
                    })
                url = run.url("images", f"{image_id:06d}.png")
                storage.write_png(url, rgb)
                storage.write_png(run.url("merge", "semantic", f"{image_id}.png"), semantic)
                records.append(ImageRecord(image_id=image_id, file_name=f"{image_id:06d}.png", url=url, width=w, height=h))
                images.append({"id": image_id, "file_name": f"{image_id:06d}.png", "height": h, "width": w})
                panoptic.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": []})
            shard = ShardManifest(shard_index=shard_index, source="test", images=records)
            storage.write_json(run.shard_manifest_url(shard_index), shard.model_dump(mode="json"))
            shard_url = run.url("merge", "shards", f"{shard.name}.json")
            storage.write_json(shard_url, {"images": images, "panoptic": panoptic, "instances": [],
                                           "instances_unoccluded": instances})
            results.append(ShardResult(stage="merge", shard=shard.name, n_images=len(records),
                                       outputs={"shard": run.rel(shard_url)}))
        merge = StageManifest(stage="merge", stage_version="1", code_version="test", config={}, config_hash="",
                              shards=results)
        storage.write_json(run.stage_manifest_url("merge"), merge.model_dump(mode="json"))
        return run

    return make
