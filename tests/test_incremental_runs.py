"""Own photos, changed folders, lost outputs and re-run stages, as a user runs them (`u2seg` through typer's
runner, against the shared temporary Prefect API): only what changed recomputes, and the result equals a clean run.

The folder: the real photos of shared/data/real_images, shrunk, 2 per shard (4 hash buckets):
bucket 0 = demo4, demo6, demo8; 1 = demo1, demo5, demo7; 2 = demo3; 3 = demo2 (io/plan.py `bucket_of`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from flows.cli import app
from u2seg_core.io.plan import bucket_of, n_buckets
from u2seg_core.rundir import RunDir
from u2seg_core.stage_run import load_run_config
from shared_paths import REAL_IMAGES_DIR

pytestmark = pytest.mark.slow

REAL = REAL_IMAGES_DIR
WIDE = {"COLUMNS": "200"}
SHARD_STAGES = ("plan", "features", "maskcut", "cluster", "stego", "merge")


def write_photos(folder: Path) -> None:
    folder.mkdir(parents=True)
    for path in sorted(REAL.glob("demo*.jpg")):
        with Image.open(path) as im:
            im.convert("RGB").resize((128, 96)).save(folder / path.name, quality=90)


def u2seg(*args: str) -> str:
    result = CliRunner().invoke(app, list(args), env=WIDE)
    assert result.exit_code == 0, result.output
    return result.output


def markers(run_dir: Path) -> dict[str, dict[str, int]]:
    """stage -> shard -> mtime of its done-marker."""
    return {
        stage: {p.stem: p.stat().st_mtime_ns for p in (run_dir / stage / "_shards").glob("*.json")}
        for stage in SHARD_STAGES
    }


def recomputed(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]) -> dict[str, set[str]]:
    return {stage: {s for s, t in after[stage].items() if before[stage].get(s) != t} for stage in after}


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, tiny_pipeline_config, prefect_api):
    root = tmp_path_factory.mktemp("incremental")
    write_photos(root / "photos")
    config = root / "tiny.json"
    maskcut = tiny_pipeline_config.maskcut.model_copy(update={"resolution": 128})  # masks on 128 x 96 photos
    config.write_text(tiny_pipeline_config.model_copy(update={"maskcut": maskcut}).model_dump_json())
    output = u2seg("run", "--images", str(root / "photos"), "--config", str(config), "--out", str(root / "run"))
    return {"root": root, "config": config, "output": output}


def test_own_folder_without_ground_truth_exits_0(first_run):
    run = RunDir(str(first_run["root"] / "run"))
    assert run.has_stage("merge") and Path(run.url("merge", "panoptic.json")).exists()
    plan = run.stage_manifest("plan").summary
    assert plan["n_images"] == 8 and plan["n_shards"] == n_buckets(8, 2) == 4
    assert "complete" in first_run["output"]


def test_touched_image_recomputes_nothing_downstream(first_run):
    root = first_run["root"]
    run_dir = root / "run-touched"
    shutil.copytree(root / "run", run_dir)
    before = markers(run_dir)
    photo = root / "photos" / "demo5.jpg"
    mtime_ns = photo.stat().st_mtime_ns
    photo.write_bytes(photo.read_bytes())  # new mtime, same bytes
    try:
        u2seg("run", "--images", str(root / "photos"), "--config", str(first_run["config"]), "--out", str(run_dir))
    finally:  # the photos are shared by the module's tests, whose copies of RUN were planned at the old mtime
        os.utime(photo, ns=(mtime_ns, mtime_ns))
    changed = recomputed(before, markers(run_dir))
    assert changed["plan"] == {f"shard-{bucket_of('demo5.jpg', 4):05d}"}
    assert all(changed[stage] == set() for stage in SHARD_STAGES[1:]), changed


def test_deleted_outputs_are_recomputed(first_run):
    root = first_run["root"]
    run_dir = root / "run-lost"
    shutil.copytree(root / "run", run_dir)
    run = RunDir(str(run_dir))
    shard = run.shards()[1]
    image_id = shard.images[0].image_id
    lost = [Path(run.image_output_url("merge", "panoptic", shard.name, image_id)),
            Path(run.image_output_url("stego", "maps", shard.name, image_id))]
    for path in lost:
        path.unlink()
    before = markers(run_dir)
    u2seg("run", "--images", str(root / "photos"), "--config", str(first_run["config"]), "--out", str(run_dir))
    assert all(path.exists() for path in lost)
    changed = recomputed(before, markers(run_dir))
    assert changed["stego"] == changed["merge"] == {shard.name}
    assert changed["features"] == changed["maskcut"] == changed["cluster"] == set()


def test_stage_cluster_with_a_new_k_marks_merge_and_evaluate_stale(first_run):
    root = first_run["root"]
    run_dir = root / "run-k"
    shutil.copytree(root / "run", run_dir)
    new_k = root / "k4.json"
    cfg = load_run_config(RunDir(str(run_dir)))  # the run's config (with its --images), K changed
    new_k.write_text(cfg.model_copy(update={"cluster": cfg.cluster.model_copy(update={"k": 2})}).model_dump_json())
    output = u2seg("stage", "cluster", "--run", str(run_dir), "--config", str(new_k))
    assert "now stale: merge, evaluate" in output and f"u2seg stage merge --run {run_dir}" in output
    status = u2seg("status", str(run_dir)).splitlines()
    for stage in ("merge", "evaluate"):
        row = next(line for line in status if f"│ {stage} " in line)
        assert "stale" in row and "upstream stage" in row
    assert "complete" in next(line for line in status if "│ cluster " in line)
    u2seg("stage", "merge", "--run", str(run_dir))
    status = u2seg("status", str(run_dir)).splitlines()
    assert "complete" in next(line for line in status if "│ merge " in line)
    assert "stale" in next(line for line in status if "│ evaluate " in line)


def test_edit_add_delete_recomputes_only_their_shards_and_equals_a_clean_run(first_run, run_outputs):
    root = first_run["root"]  # the last test of the module: it changes the photos in place
    photos, run_dir = root / "photos", root / "run-changed"
    shutil.copytree(root / "run", run_dir)
    before = markers(run_dir)

    with Image.open(photos / "demo3.jpg") as im:
        im.rotate(90).save(photos / "demo3.jpg")  # edited
    shutil.copy(photos / "demo1.jpg", photos / "added.jpg")  # added
    (photos / "demo2.jpg").unlink()  # deleted
    touched = {f"shard-{bucket_of(name, 4):05d}" for name in ("demo3.jpg", "added.jpg", "demo2.jpg")}
    assert touched == {"shard-00002", "shard-00003"}

    u2seg("run", "--images", str(photos), "--config", str(first_run["config"]), "--out", str(run_dir))
    changed = recomputed(before, markers(run_dir))
    for stage in ("plan", "features", "maskcut"):  # per-shard stages: only the changed shard
        assert changed[stage] == {"shard-00002"}, (stage, changed[stage])
    # K-means and STEGO training see the changed masks and features, so they refit and everything after them
    # recomputes (their outputs depend on every image)
    for stage in ("cluster", "stego", "merge"):
        assert changed[stage] == {"shard-00000", "shard-00001", "shard-00002"}, (stage, changed[stage])
    for stage in SHARD_STAGES:  # shard-00003 is now empty: its marker and outputs are gone
        assert "shard-00003" not in markers(run_dir)[stage]
    assert not (run_dir / "merge" / "panoptic" / "shard-00003").exists()

    u2seg("run", "--images", str(photos), "--config", str(first_run["config"]), "--out", str(root / "clean"))
    incremental, clean = run_outputs(run_dir), run_outputs(root / "clean")
    assert sorted(incremental) == sorted(clean)
    assert [name for name in clean if incremental[name] != clean[name]] == []
