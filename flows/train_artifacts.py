"""What the Prefect UI shows of the train stage: a progress artifact while it trains (from RUN/train/progress.json,
written by the training loop) and, once done, the loss curves with the final loss of every term."""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
from collections.abc import Iterator

from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from u2seg_core import storage
from u2seg_core.rundir import RunDir

from .artifacts import artifact_key

POLL_SECONDS = 2.0
log = logging.getLogger(__name__)


@contextlib.contextmanager
def watch_training(run: RunDir) -> Iterator[None]:
    """Keep a progress artifact at the training's iteration / max_iter while the body runs."""
    progress_url = run.url("train", "progress.json")
    artifact = create_progress_artifact(0.0, key=artifact_key(run, "train", "progress"),
                                        description="train: iterations done")
    stop = threading.Event()

    def poll() -> None:
        last, warned = None, False
        while not stop.wait(POLL_SECONDS):
            try:
                if storage.exists(progress_url):
                    state = storage.read_json(progress_url)
                    percent = 100.0 * state["iteration"] / max(state["max_iter"], 1)
                    if percent != last:
                        update_progress_artifact(artifact, percent)
                        last = percent
            except Exception as exc:  # a busy API server: try again at the next poll, never fail the training
                if not warned:
                    log.warning("train progress artifact not updated (%s); retrying", exc)
                    warned = True

    thread = threading.Thread(target=poll, name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def loss_curves_artifact(run: RunDir, metrics: dict) -> None:
    """Markdown artifact: the loss-curve PNG (inline) and a table of the final loss values."""
    png = storage.read_bytes(run.url("train", "loss.png"))
    final = metrics.get("final_losses", {})
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in sorted(final.items()))
    markdown = (
        f"# Training losses\n\n![loss curves](data:image/png;base64,{base64.b64encode(png).decode()})\n\n"
        f"`{run.url('train', 'loss.png')}`, {metrics.get('iters_per_second', 0.0):.2f} iterations/s\n\n"
        f"| loss (mean of the last iterations) | value |\n|---|---|\n{rows}\n"
    )
    create_markdown_artifact(markdown, key=artifact_key(run, "train", "losses"), description="train: loss curves")
