"""`u2seg` command line: run the pipeline or one stage, inspect a run, make the synthetic dataset, evaluate."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table

from deploy.spec import SPECS
from u2seg_core import storage
from u2seg_core.config import ConfigError, OrchestrationConfig, PipelineConfig, PredictConfig, SynthConfig
from u2seg_core.io.sources import is_image_file
from u2seg_core.registry import STAGES
from u2seg_core.rundir import RunDir
from u2seg_core.stage_run import load_run_config
from u2seg_core.status import StageStatus, run_status
from u2seg_core.steps import MAX_LISTED_FAILURES, shard_refs

app = typer.Typer(
    help="u2seg: unsupervised universal image segmentation (MaskCut -> K-means -> STEGO -> panoptic pseudo-labels),"
    " resumable per shard, on Prefect + Dask.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console()
_debug = {"on": False}


USER_ERROR_EXIT = 2


def user_error(message: str, cause: BaseException | None = None) -> NoReturn:
    """A user's mistake: print one line naming the problem and the fix, exit with code 2 (with --debug: re-raise
    `cause`, for its traceback)."""
    if _debug["on"] and cause is not None:
        raise cause
    console.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True, highlight=False)
    raise typer.Exit(USER_ERROR_EXIT)


@app.callback()
def main(debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")] = False) -> None:
    """u2seg: unsupervised universal image segmentation, resumable per shard."""
    _debug["on"] = debug

StageName = Enum("StageName", {name: name for name in STAGES}, type=str)
DaskSpec = Enum("DaskSpec", {name: name for name in SPECS}, type=str)


class Preset(str, Enum):
    demo = "demo"
    reference = "reference"


class Runner(str, Enum):
    threads = "threads"
    dask = "dask"


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML/JSON PipelineConfig file.")]
RefreshOpt = Annotated[list[StageName], typer.Option("--refresh", help="Recompute this stage even where cached (repeatable).")]
RunnerOpt = Annotated[Optional[Runner], typer.Option(help="threads (a bounded pool) or dask.")]
AddressOpt = Annotated[Optional[str], typer.Option(help="Scheduler of a running Dask cluster (implies --runner dask).")]
SpecOpt = Annotated[Optional[DaskSpec], typer.Option(help="Dask cluster spec in deploy/ (implies --runner dask).")]
WorkersOpt = Annotated[Optional[int], typer.Option(min=1, help="Threads, or local Dask worker processes.")]
RunDirOpt = Annotated[str, typer.Option("--run", "-r", help="Run directory (local path or s3:// URL).")]


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/bold red] {message}")
    raise typer.Exit(1)


def load_config(path: Path) -> PipelineConfig:
    """`PipelineConfig.load`, with a broken file reported as a UserError."""
    try:
        return PipelineConfig.load(path)
    except ConfigError as exc:
        user_error(str(exc), exc)


def _check_run_dir(run_dir: str, must_be_run: bool) -> None:
    """A run directory must be a folder; `must_be_run`: one that `u2seg run` started (it has run.json)."""
    if not storage.is_remote(run_dir) and Path(run_dir).exists() and not Path(run_dir).is_dir():
        user_error(f"run directory {run_dir} is a file; pass a folder (a new one, or an existing run)")
    run = RunDir(run_dir)
    if must_be_run and not run.is_run():
        user_error(f"{run_dir} is not a u2seg run (no run.json); start one with `u2seg run --out {run_dir}`")
    if not must_be_run and not storage.is_remote(run_dir) and Path(run_dir).is_dir() and any(Path(run_dir).iterdir()) \
            and not run.is_run():
        user_error(f"{run_dir} is a folder with other files and no run.json; pick a new --out folder or an existing run")


def _inside(inner: str, outer: str) -> bool:
    if storage.is_remote(inner) or storage.is_remote(outer):
        return storage.join(inner, "").startswith(storage.join(outer, ""))
    return Path(inner).resolve().is_relative_to(Path(outer).resolve())


def _check_images(images: str, out: str) -> None:
    if _inside(out, images):
        user_error(f"--out {out} is inside --images {images}: its outputs would be planned as images; "
                   "put the run directory elsewhere")
    if not storage.exists(images):
        user_error(f"--images {images} does not exist; pass an image folder, an ImageNet train tree, a COCO .json "
                   "or an s3:// URL")
    if not storage.is_remote(images) and Path(images).is_file() and not (
        images.lower().endswith(".json") or is_image_file(images)
    ):
        user_error(f"--images {images} is neither an image nor a COCO .json; pass the folder that holds the images")


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


def _run_flow(
    run_dir: str, cfg: PipelineConfig, stages: list[str] | None, refresh: list[str], show_status: bool = True
) -> None:
    from flows.pipeline import pipeline_flow
    from flows.server import temporary_server

    try:
        with temporary_server():
            pipeline_flow(run_dir=run_dir, config=cfg, stages=stages, refresh=refresh)
    except Exception as exc:  # the flow already logged the traceback
        if _debug["on"]:
            raise
        console.print(f"[bold red]run failed:[/bold red] {exc}")
        console.print(f"Finished shards are kept: re-run the same command to resume; `u2seg status {run_dir}` lists what failed.")
        raise typer.Exit(1) from exc
    if not show_status:
        return
    run = RunDir(run_dir)
    report = _print_status(run, shards=False)
    stale = [s.stage for s in report if s.state == "stale"]
    if stale:
        console.print(f"[yellow]now stale:[/yellow] {', '.join(stale)} (an upstream stage changed); re-run them with "
                      + " then ".join(f"`u2seg stage {name} --run {run_dir}`" for name in stale))
    if run.has_stage("evaluate"):
        report_json = storage.read_json(run.url("evaluate", "report.json"))
        if report_json.get("rows"):
            images = f"{report_json['sets'][report_json['rows'][0]['set']]['counts'].get('n_scored', '?')} images"
            _print_rows(report_json, f"evaluation on the same {images}: every prediction set, every protocol")
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
    """Run the whole pipeline: plan, features, maskcut, cluster, stego, merge, (train, predict: when evaluate scores
    the model, as the demo preset does) evaluate; finished shards are reused."""
    if config:
        cfg = load_config(config)
    elif (preset or (Preset.reference if images else Preset.demo)) == Preset.demo:
        cfg = PipelineConfig.demo()
    else:
        cfg = PipelineConfig()
    storage.configure(cfg.storage.fsspec_options())
    _check_run_dir(out, must_be_run=False)
    if images:
        _check_images(images, out)
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
    """Run one stage of an existing run (its upstream stages must be complete). Config: --config, else RUN/run.json.

    Stages downstream of it are not re-run: they are reported stale until you run them."""
    cfg = load_config(config) if config else None
    if cfg is not None:
        storage.configure(cfg.storage.fsspec_options())
    _check_run_dir(run_dir, must_be_run=config is None or name.value != "plan")
    if cfg is None:
        cfg = load_run_config(RunDir(run_dir))
    missing = [up for up in STAGES[name.value].upstream_for(cfg) if not RunDir(run_dir).has_stage(up)]
    if missing:
        user_error(f"stage {name.value} needs {', '.join(missing)} first; run `u2seg stage {missing[0]} --run {run_dir}`")
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
    """What is done, per stage and shard, what is stale, and what failed."""
    _check_run_dir(run_dir, must_be_run=True)
    _print_status(RunDir(run_dir), shards)


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _print_status(run: RunDir, shards: bool) -> list[StageStatus]:
    report = run_status(run, load_run_config(run) if run.is_run() else None)
    table = Table(title=f"u2seg run {run.root}")
    for column in ("stage", "state", "shards done", "shard errors", "image failures"):
        table.add_column(column)
    for s in report:
        colour = {"complete": "green", "failed": "red", "partial": "yellow", "stale": "yellow"}.get(s.state, "dim")
        table.add_row(
            s.stage, f"[{colour}]{s.state}[/{colour}]" + (f" ({s.stale})" if s.stale else ""),
            f"{len(s.done)}/{s.n_shards}" if s.n_shards else "-", str(len(s.errors)), str(len(s.failures)),
        )
    console.print(table)
    for s in report:
        numbers = [f"{k}={_fmt(v)}" for k, v in s.summary.items() if isinstance(v, (int, float, str))]
        if numbers:
            console.print(f"[bold]{s.stage}[/bold]: " + ", ".join(numbers))
    for s in report:
        for warning in s.warnings:
            console.print(f"[yellow]{s.stage} warning:[/yellow] {warning}")
        for shard, message in sorted(s.errors.items()):
            console.print(f"[red]{s.stage} {shard} failed:[/red] {message}")
        for f in s.failures[:MAX_LISTED_FAILURES]:
            console.print(f"[yellow]{s.stage} image {f['image_id']} ({f['file_name']}):[/yellow] {f['reason']}")
        if len(s.failures) > MAX_LISTED_FAILURES:
            console.print(f"[yellow]{s.stage}: ... and {len(s.failures) - MAX_LISTED_FAILURES} more image failures[/yellow]"
                          f" (all in {run.stage_manifest_url(s.stage) if s.complete else run.url(s.stage, '_shards')})")
    if shards:
        shard_stages = [s for s in report if s.n_shards]
        grid = Table(title="shards")
        grid.add_column("shard")
        for s in shard_stages:
            grid.add_column(s.stage)
        for ref in shard_refs(run) if run.has_stage("plan") else []:
            grid.add_row(ref.name, *(
                "[red]error[/red]" if ref.name in s.errors else ("done" if ref.name in s.done else "-")
                for s in shard_stages
            ))
        console.print(grid)
    return report


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


GtFormat = Enum("GtFormat", {name: name for name in ("synthetic", "coco", "cocostuff27", "cityscapes")}, type=str)
ProtocolName = Enum("ProtocolName", {name: name for name in ("u2seg", "hungarian", "stego27")}, type=str)


def _prediction_sets(items: list[str]) -> tuple[dict[str, str], RunDir | None]:
    """NAME=PATH / PATH items -> {name: stage or folder} and the run they belong to (if one is a run: its merge
    stage as "pseudo-labels", and its predict stage as "model" when that ran)."""
    sets: dict[str, str] = {}
    run = None
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        if RunDir(path).is_run():
            run = RunDir(path)
            stages = {"pseudo-labels": "merge", "model": "predict"}
            sets.update({name or label: stage for label, stage in stages.items() if run.has_stage(stage)})
            if not sets:
                user_error(f"run {path} has no completed merge or predict stage; run `u2seg run --out {path}` first")
        else:
            sets[name or Path(path.rstrip("/")).name] = path
    return sets, run


@app.command()
def evaluate(
    predictions: Annotated[list[str], typer.Option(
        "--predictions", "-p", help="A run directory (its merge stage, and predict when it ran), or a folder in the "
        "merge layout (RUN/merge, `u2seg predict --output DIR`); NAME=PATH names it. Repeatable: one report row "
        "per set and protocol.")],
    gt: Annotated[Optional[str], typer.Option(help="Ground-truth dataset root (default: the run's synthetic "
                                                   "dataset; none: statistics and overlays only).")] = None,
    gt_format: Annotated[Optional[GtFormat], typer.Option("--gt-format", help="Layout of --gt (default: "
                                                                    "evaluate.gt_format, synthetic).")] = None,
    protocol: Annotated[Optional[list[ProtocolName]], typer.Option(
        "--protocol", help="u2seg, hungarian or stego27 (repeatable; default: evaluate.protocols).")] = None,
    split: Annotated[Optional[str], typer.Option(help="Dataset split (default val2017 / val).")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Report folder (default PRED/evaluate, or "
                                                                   "RUN/evaluate-<format> for a run).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Processes the shards are spread over.")] = 2,
    config: ConfigOpt = None,
) -> None:
    """PQ / AP / mIoU of prediction sets against ground truth (COCO, COCO-Stuff-27, Cityscapes, synthetic)."""
    from u2seg_core.evaluate.stage import evaluate_predictions

    sets, run = _prediction_sets(predictions)
    cfg = load_config(config) if config else (load_run_config(run) if run else PipelineConfig())
    updates: dict[str, Any] = {"split": split or cfg.evaluate.split}
    if gt_format is not None:
        updates["gt_format"] = gt_format.value
    if gt is not None:
        updates["ground_truth"] = gt
    if protocol:
        updates["protocols"] = [p.value for p in protocol]
    settings = cfg.evaluate.model_copy(update=updates)
    first = next(iter(sets.values()))
    target = out or (run.url(f"evaluate-{settings.gt_format}") if run else storage.join(first, "evaluate"))
    try:
        report = evaluate_predictions(sets, settings, target, run, cfg, workers=workers)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        user_error(f"{exc}", exc)
    if not report["rows"]:
        console.print(f"no ground truth given: pseudo-label statistics and overlays in {target}/report.md")
        return
    _print_rows(report, f"{', '.join(sets)} against {report['ground_truth']['root']} (mappings fitted on it)")
    console.print(f"report: {report['outputs']['report_md']}")


def _print_rows(report: dict[str, Any], title: str) -> None:
    """One table row per prediction set and protocol of an evaluation report."""
    metrics = ("PQ", "SQ", "RQ", "PQ_th", "PQ_st", "AP_box", "AP_mask", "mIoU", "pixel_accuracy")
    table = Table(title=title)
    for column in ("set", "protocol", *metrics):
        table.add_column(column, no_wrap=True)
    for row in report["rows"]:
        values = [row["summary"].get(k) for k in metrics]
        table.add_row(row["set"], row["protocol"], *("–" if v is None else f"{v:.2f}" for v in values))
    Console(width=max(console.width, 140)).print(table)  # never squeeze the numbers on a narrow terminal


def _predict_config(
    base: PipelineConfig, image_input: str, single: bool, weights: str | None, settings: dict[str, Any],
    shard_size: int | None,
) -> PipelineConfig:
    """`base` with the source set to `image_input` and the CLI's predict settings."""
    source = base.source.model_copy(update={"uri": image_input, **({"shard_size": shard_size} if shard_size else {})})
    predict = {**base.predict.model_dump(), **settings, "weights": weights}
    if single:
        predict["num_workers"] = 0  # a worker process costs more than decoding one image
    try:
        return base.model_copy(update={"source": source, "predict": type(base.predict).model_validate(predict)})
    except ValueError as exc:
        user_error(str(exc).splitlines()[-1] if str(exc) else repr(exc), exc)


def _weights_path(weights: str | None) -> str:
    """--weights as the run config records it: a remote URL as given, else the local file it resolves to."""
    from u2seg_core.backbone.weights import WeightsNotFoundError
    from u2seg_core.model.predictor import resolve_checkpoint

    if weights is not None and storage.is_remote(weights):
        return weights
    try:
        return str(resolve_checkpoint(weights).resolve())
    except WeightsNotFoundError as exc:
        user_error(str(exc), exc)


def _check_predict_inputs(cfg: PipelineConfig, single: bool) -> None:
    """Fail fast, one line each, on what a user can get wrong: weights, mapping file, device, a single image."""
    from u2seg_core.backbone.weights import WeightsNotFoundError
    from u2seg_core.io.decode import ImageDecodeError, load_image
    from u2seg_core.model.checkpoint import CheckpointError
    from u2seg_core.predict.mapping import MappingFileError, load_class_names
    from u2seg_core.predict.stage import predictor_for

    from u2seg_core.device import resolve_device

    settings = cfg.predict
    try:
        resolve_device(settings.device)
    except (RuntimeError, ValueError) as exc:  # CUDA asked for but absent, or a malformed device name
        user_error(f"--device {settings.device}: {exc}", exc)
    try:
        if settings.mapping:
            load_class_names(settings.mapping)
        if single:
            load_image(cfg.source.uri, cfg.source.max_pixels)
        predictor_for(settings.weights, settings)  # loads once; the predict stage reuses it in this process
    except (CheckpointError, WeightsNotFoundError, MappingFileError, ImageDecodeError) as exc:
        user_error(str(exc), exc)


@app.command()
def predict(
    image_input: Annotated[str, typer.Option("--input", "-i", help="An image, a folder of images (searched recursively) or an s3:// URL.")],
    output: Annotated[str, typer.Option("--output", "-o", help="Output folder: a run directory holding plan/ and predict/ (local path or s3:// URL).")],
    weights: Annotated[Optional[str], typer.Option(help="Checkpoint: U2Seg's released .pth/.pkl, one of ours, or a file name searched in $U2SEG_WEIGHTS and the torch hub cache (default cocotrain_300_0089999.pth there).")] = None,
    score_thresh: Annotated[float, typer.Option(min=0.0, max=1.0, help="Instance score threshold (ROI heads and panoptic combine).")] = PredictConfig().score_thresh,
    min_size: Annotated[int, typer.Option(min=0, help="Test-time shortest edge (0 = original size).")] = PredictConfig().min_size_test,
    max_size: Annotated[int, typer.Option(min=1, help="Test-time longest-edge cap.")] = PredictConfig().max_size_test,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = PredictConfig().batch_size,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = PredictConfig().device,
    raw: Annotated[bool, typer.Option("--raw", help="Also write the raw outputs per image (.npz + segments JSON).")] = False,
    overlays: Annotated[bool, typer.Option(help="Write an overlay PNG per image.")] = True,
    mapping: Annotated[Optional[str], typer.Option(help="Cluster -> class mapping JSON from `u2seg evaluate` (its report.json): overlays show class names.")] = None,
    shard_size: Annotated[Optional[int], typer.Option(min=1, help="Images per shard (default source.shard_size).")] = None,
    local: Annotated[bool, typer.Option("--local", help="Run in this process without Prefect (always for a single image).")] = False,
    refresh: Annotated[bool, typer.Option("--refresh", help="Recompute every shard (e.g. after replacing the weights file in place).")] = False,
    config: ConfigOpt = None,
    runner: RunnerOpt = None,
    workers: WorkersOpt = None,
) -> None:
    """Run a U2Seg checkpoint on your images: panoptic, instance and semantic predictions plus overlays."""
    from u2seg_core.local_runner import run_pipeline_local

    if not storage.exists(image_input):
        user_error(f"--input {image_input} does not exist; pass an image, a folder of images or an s3:// URL")
    single = not storage.get_fs(image_input)[0].isdir(storage.get_fs(image_input)[1])
    base = load_config(config) if config else PipelineConfig()
    storage.configure(base.storage.fsspec_options())
    _check_run_dir(output, must_be_run=False)
    settings = {"score_thresh": score_thresh, "min_size_test": min_size, "max_size_test": max_size,
                "batch_size": batch_size, "device": device, "raw": raw, "overlays": overlays, "mapping": mapping}
    cfg = _predict_config(base, image_input, single, _weights_path(weights), settings, shard_size)
    if RunDir(output).is_run() and load_run_config(RunDir(output)).source.uri != cfg.source.uri:
        user_error(f"{output} is a run of other images ({load_run_config(RunDir(output)).source.uri}); predicting "
                   f"{image_input} there would re-plan it: pick a new --output folder")
    _check_predict_inputs(cfg, single)
    stages, forced = ["plan", "predict"], ["predict"] if refresh else []
    if single or local:
        try:
            run_pipeline_local(cfg, output, stages=stages, refresh=forced)
        except Exception as exc:
            if _debug["on"]:
                raise
            console.print(f"[bold red]predict failed:[/bold red] {exc}")
            raise typer.Exit(1) from exc
    else:
        _run_flow(output, _with_orchestration(cfg, runner, None, None, workers), stages, forced, show_status=False)
    _print_predictions(RunDir(output))


def _print_predictions(run: RunDir) -> None:
    """What `u2seg predict` wrote, and every image that failed."""
    manifest = run.stage_manifest("predict")
    summary = manifest.summary
    console.print(
        f"predicted {summary['n_images'] - summary['n_failed']}/{summary['n_images']} images "
        f"({int(summary.get('instances', 0))} instances, K={summary.get('num_things')} thing clusters, "
        f"S={summary.get('num_stuff')} stuff classes): {run.url('predict')}"
    )
    console.print(f"COCO panoptic: {run.url(manifest.outputs['panoptic_json'])}, instances: "
                  f"{run.url(manifest.outputs['instances_json'])}; overlays in {run.url('predict', 'overlays')}")
    for failure in manifest.failures[:MAX_LISTED_FAILURES]:
        console.print(f"[yellow]failed: {failure.file_name}:[/yellow] {failure.reason}", highlight=False)
    if len(manifest.failures) > MAX_LISTED_FAILURES:
        console.print(f"... and {len(manifest.failures) - MAX_LISTED_FAILURES} more (`u2seg status {run.root}`)")


if __name__ == "__main__":
    app()
