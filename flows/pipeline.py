"""The full pipeline flow: the stage flows as subflows in order, then a markdown summary of the run.

Every deployment in prefect.yaml points here; a stage deployment just sets `stages=[<stage>]`. The flow picks
the task runner from `config.orchestration` (a local Dask cluster is started once and shared by the stages).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import State

from u2seg_core import storage
from u2seg_core.config import PipelineConfig
from u2seg_core.manifest import StageManifest
from u2seg_core.registry import STAGES, select_stages
from u2seg_core.stage_run import load_run_config, update_run_manifest
from u2seg_core.status import run_status
from u2seg_core.rundir import RunDir

from .artifacts import artifact_key, summary_markdown
from .runners import shared_cluster, task_runner_for
from .stages import STAGE_FLOWS


def _pipeline_run_name() -> str:
    """e.g. "demo-all" or "demo-maskcut"."""
    params = flow_run.parameters
    run_name = params["run_dir"].rstrip("/").rsplit("/", 1)[-1]
    return f"{run_name}-{'+'.join(params.get('stages') or ['all'])}"


def resolve_config(run: RunDir, config: PipelineConfig | None) -> PipelineConfig:
    """The given config, else the one in RUN/run.json, else the offline demo preset."""
    if config is not None:
        return config
    return load_run_config(run) if storage.exists(run.run_manifest) else PipelineConfig.demo()


@flow(name="u2seg-pipeline", flow_run_name=_pipeline_run_name)
def pipeline_flow(
    run_dir: str,
    config: PipelineConfig | None = None,
    stages: list[str] | None = None,
    refresh: list[str] | None = None,
) -> dict[str, str]:
    """Run `stages` (default: all, in order) into `run_dir`; `refresh` stages recompute even when cached.

    Returns stage -> manifest hash.
    """
    run, logger = RunDir(run_dir), get_run_logger()
    cfg = resolve_config(run, config)
    storage.configure(cfg.storage.fsspec_options())
    names, forced = select_stages(stages, cfg), set(select_stages(refresh or []))
    update_run_manifest(run, cfg)
    manifests: dict[str, StageManifest] = {}
    states: dict[str, State] = {}

    failed = None
    try:
        with shared_cluster(cfg.orchestration) as orch:
            stage_cfg = cfg.model_copy(update={"orchestration": orch})
            for name in names:
                if name in forced:
                    logger.info("stage %s: --refresh, every shard recomputes", name)
                stage_flow = STAGE_FLOWS[name].with_options(task_runner=task_runner_for(orch))
                # wait_for: the run graph draws an edge from each upstream stage that ran in this flow run
                upstream = [states[up] for up in STAGES[name].upstream if up in states]
                state = stage_flow(
                    run_dir=run.root, config_json=stage_cfg.model_dump_json(), refresh=name in forced,
                    wait_for=upstream, return_state=True,
                )
                manifests[name] = state.result()
                states[name] = state
                update_run_manifest(run, cfg, {name: manifests[name]})
            for status in run_status(run, cfg):
                if status.state == "stale" and status.stage not in names:
                    logger.warning("stage %s is now stale (%s): run `u2seg stage %s`", status.stage, status.stale,
                                   status.stage)
    except Exception as exc:
        failed = f"{type(exc).__name__}: {str(exc)[:2000]}"
        raise
    finally:
        create_markdown_artifact(
            summary_markdown(run, manifests, failed), key=artifact_key(run, "summary"),
            description=f"u2seg run {run.root}",
        )
    return {name: m.hash for name, m in manifests.items()}
