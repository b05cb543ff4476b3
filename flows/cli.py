"""`u2seg` command line: run the pipeline or one stage, inspect a run, make the synthetic dataset, evaluate."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from deploy.spec import SPECS
from u2seg_core.config import OrchestrationConfig, PipelineConfig, SynthConfig
from u2seg_core.pipeline import STAGES, load_run_config, run_status
from u2seg_core.rundir import RunDir

app = typer.Typer(
    help="u2seg: unsupervised universal image segmentation (MaskCut -> K-means -> STEGO -> panoptic pseudo-labels),"
    " resumable per shard, on Prefect + Dask.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()

StageName = Enum("StageName", {name: name for name in STAGES}, type=str)
DaskSpec = Enum("DaskSpec", {name: name for name in SPECS}, type=str)


class Preset(str, Enum):
    demo = "demo"
    reference = "reference"


class Runner(str, Enum):
    threads = "threads"
    dask = "dask"


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML/JSON PipelineConfig file.", exists=True, dir_okay=False)]
RefreshOpt = Annotated[list[StageName], typer.Option("--refresh", help="Recompute this stage even where cached (repeatable).")]
RunnerOpt = Annotated[Optional[Runner], typer.Option(help="threads (a bounded pool) or dask.")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Scheduler of a running Dask cluster (implies --runner dask).")]
SpecOpt = Annotated[Optional[DaskSpec], typer.Option(help="Dask cluster spec in deploy/ (implies --runner dask).")]
WorkersOpt = Annotated[Optional[int], typer.Option(min=1, help="Threads, or local Dask worker processes.")]
RunDirOpt = Annotated[str, typer.Option("--run", "-r", help="Run directory (local path or s3:// URL).")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(1)


def _with_orchestration(
    cfg: PipelineConfig, runner: Runner | None, dask_address: str | None, dask_spec: DaskSpec | None,
    workers: int | None,
) -> PipelineConfig:
    update: dict[str, Any] = {}
    if runner:
        update["runner"] = runner.value
    if dask_address or dask_spec:
        update.update(runner="dask", dask_address=dask_address, dask_spec=dask_spec.value if dask_spec else None)
    if workers:
        update["max_workers"] = workers
    orch = OrchestrationConfig.model_validate({**cfg.orchestration.model_dump(), **update})
    return cfg.model_copy(update={"orchestration": orch})


def _run_flow(run_dir: str, cfg: PipelineConfig, stages: list[str] | None, refresh: list[str]) -> None:
    from flows.pipeline import pipeline_flow

    try:
        pipeline_flow(run_dir=run_dir, config=cfg, stages=stages, refresh=refresh)
    except Exception as exc:  # the flow already logged the traceback
        console.print(f"[bold red]run failed:[/bold red] {exc}")
        console.print(f"Finished shards are kept: re-run the same command to resume; `u2seg status {run_dir}` lists what failed.")
        raise typer.Exit(1) from exc
    run = RunDir(run_dir)
    _print_status(run, shards=False)
    if run.has_stage("evaluate"):
        console.print(f"report: {run.url('evaluate', 'report.md')}")


@app.command()
def run(
    images: Annotated[Optional[str], typer.Option(help="Image folder, ImageNet train tree, COCO JSON or s3:// URL. Default: the built-in synthetic dataset.")] = None,
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory (local path or s3:// URL).")] = "runs/demo",
    config: ConfigOpt = None,
    preset: Annotated[Optional[Preset], typer.Option(help="demo (offline, pixel features; default without --images) or reference (DINO ViT-B/8; default with --images).")] = None,
    refresh: RefreshOpt = [],
    runner: RunnerOpt = None,
    dask_address: AddressOpt = None,
    dask_spec: SpecOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Run the whole pipeline: plan, features, maskcut, cluster, stego, merge, evaluate (finished shards are reused)."""
    if config:
        cfg = PipelineConfig.load(config)
    elif (preset or (Preset.reference if images else Preset.demo)) == Preset.demo:
        cfg = PipelineConfig.demo()
    else:
        cfg = PipelineConfig()
    if images:
        cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"uri": images})})
    _run_flow(out, _with_orchestration(cfg, runner, dask_address, dask_spec, workers), None, [s.value for s in refresh])


@app.command()
def stage(
    name: Annotated[StageName, typer.Argument(help="Stage to run.")],
    run_dir: RunDirOpt,
    config: ConfigOpt = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every shard of the stage.")] = False,
    runner: RunnerOpt = None,
    dask_address: AddressOpt = None,
    dask_spec: SpecOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Run one stage of an existing run (its upstream stages must be complete). Config: --config, else RUN/run.json."""
    try:
        cfg = PipelineConfig.load(config) if config else load_run_config(RunDir(run_dir))
    except FileNotFoundError as exc:
        _fail(str(exc))
    cfg = _with_orchestration(cfg, runner, dask_address, dask_spec, workers)
    _run_flow(run_dir, cfg, [name.value], [name.value] if refresh else [])


@app.command()
def features(
    run_dir: RunDirOpt,
    config: ConfigOpt = None,
    refresh: Annotated[bool, typer.Option(help="Recompute every shard.")] = False,
    runner: RunnerOpt = None,
    dask_address: AddressOpt = None,
    dask_spec: SpecOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Extract and store backbone features (same as `u2seg stage features`)."""
    stage(StageName("features"), run_dir, config, refresh, runner, dask_address, dask_spec, workers)


@app.command()
def status(
    run_dir: Annotated[str, typer.Argument(help="Run directory (local path or s3:// URL).")],
    shards: Annotated[bool, typer.Option("--shards", "-s", help="Also show every shard of every stage.")] = False,
) -> None:
    """What is done, per stage and shard, and what failed."""
    run_ = RunDir(run_dir)
    if not run_.has_stage("plan") and not Path(run_dir).exists() and "://" not in run_dir:
        _fail(f"{run_dir} is not a run directory (no plan/manifest.json)")
    _print_status(run_, shards)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_status(run: RunDir, shards: bool) -> None:
    report = run_status(run)
    table = Table(title=f"u2seg run {run.root}")
    for column in ("stage", "state", "shards done", "shard errors", "image failures"):
        table.add_column(column)
    for s in report:
        state = "complete" if s.complete else ("failed" if s.errors else ("partial" if s.done else "not run"))
        colour = {"complete": "green", "failed": "red", "partial": "yellow"}.get(state, "dim")
        table.add_row(
            s.stage, f"[{colour}]{state}[/{colour}]", f"{len(s.done)}/{s.n_shards}" if s.n_shards else "-",
            str(len(s.errors)), str(len(s.failures)),
        )
    console.print(table)
    for s in report:
        numbers = [f"{k}={_fmt(v)}" for k, v in s.summary.items() if isinstance(v, (int, float, str))]
        if numbers:
            console.print(f"[bold]{s.stage}[/bold]: " + ", ".join(numbers))
    for s in report:
        for shard, message in sorted(s.errors.items()):
            console.print(f"[red]{s.stage} {shard} failed:[/red] {message}")
        for f in s.failures[:20]:
            console.print(f"[yellow]{s.stage} image {f['image_id']} ({f['file_name']}):[/yellow] {f['reason']}")
    if shards:
        shard_stages = [s for s in report if s.n_shards]
        grid = Table(title="shards")
        grid.add_column("shard")
        for s in shard_stages:
            grid.add_column(s.stage)
        n_shards = max((s.n_shards for s in shard_stages), default=0)
        for i in range(n_shards):
            name = f"shard-{i:05d}"
            grid.add_row(name, *(
                "[red]error[/red]" if name in s.errors else ("done" if name in s.done else "-") for s in shard_stages
            ))
        console.print(grid)


@app.command()
def synth(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    n: Annotated[int, typer.Option(min=1, help="Number of images.")] = SynthConfig().n,
    size: Annotated[int, typer.Option(min=32, help="Image side in pixels.")] = SynthConfig().size,
    seed: Annotated[int, typer.Option(help="Random seed.")] = SynthConfig().seed,
) -> None:
    """Write the built-in synthetic dataset (images + COCO instances/panoptic + semantic ground truth)."""
    from u2seg_core.synth import generate_dataset

    generate_dataset(str(out), SynthConfig(n=n, size=size, seed=seed))
    console.print(f"wrote {n} images of {size}x{size} with ground truth to {out}")


@app.command()
def show(
    run_dir: Annotated[str, typer.Argument(help="Run directory.")],
    image_id: Annotated[int, typer.Argument(help="Image id (see plan/shards/*.json).")],
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="PNG to write (default RUN/show/<id>.png).")] = None,
) -> None:
    """Draw one image's MaskCut instance masks over it, as a PNG."""
    from u2seg_core.viz import show_image_masks

    run_ = RunDir(run_dir)
    try:
        target = show_image_masks(run_, image_id, out or run_.url("show", f"{image_id:06d}.png"))
    except (KeyError, FileNotFoundError) as exc:
        _fail(str(exc))
    console.print(f"wrote {target}")


@app.command()
def evaluate(
    run_dir: Annotated[Optional[str], typer.Option("--run", "-r", help="Run directory: evaluate its merged pseudo-labels.")] = None,
    pred: Annotated[Optional[str], typer.Option(help="Prediction folder with panoptic.json, panoptic/ and optionally instances.json (e.g. RUN/merge).")] = None,
    gt: Annotated[Optional[str], typer.Option(help="Ground-truth folder in the synthetic-dataset layout (docs/architecture.md).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Report folder for --pred/--gt (default PRED/evaluate).")] = None,
    config: ConfigOpt = None,
) -> None:
    """PQ / AP / mIoU of a run's pseudo-labels (--run), or of any predictions against ground truth (--pred --gt)."""
    if run_dir and not (pred or gt):
        stage(StageName("evaluate"), run_dir, config, False, None, None, None, None)
        return
    if run_dir or not (pred and gt):
        _fail("give either --run RUN_DIR, or both --pred DIR and --gt DIR")
    from u2seg_core import storage
    from u2seg_core.evaluate.stage import evaluate_predictions

    instances = storage.join(pred, "instances.json")
    settings = PipelineConfig.load(config).evaluate if config else PipelineConfig().evaluate
    try:
        report = evaluate_predictions(
            storage.join(pred, "panoptic.json"), storage.join(pred, "panoptic"),
            instances if storage.exists(instances) else None, gt, settings, out or storage.join(pred, "evaluate"),
        )
    except FileNotFoundError as exc:
        _fail(str(exc))
    table = Table(title=f"{pred} against {gt}")
    table.add_column("metric")
    table.add_column("value")
    for name, value in report["summary"].items():
        table.add_row(name, f"{value:.2f}" if isinstance(value, float) else str(value))
    console.print(table)

if __name__ == "__main__":
    app()
