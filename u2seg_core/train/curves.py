"""Loss curves of a training run as a PNG: the total and each loss term per iteration (log scale), and the LR."""

from __future__ import annotations

import io

import numpy as np

SMOOTHING = 20  # iterations in the running mean drawn over the raw curve


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(window, len(values)))
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    head = cumulative[1:window] / np.arange(1, window)
    return np.concatenate([head, (cumulative[window:] - cumulative[:-window]) / window])


def loss_curves_png(history: list[dict[str, float]]) -> bytes:
    """PNG bytes; `history` rows carry iteration, lr, total and the loss terms (loss_*)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5), dpi=100)
    FigureCanvasAgg(figure)
    losses_ax, lr_ax = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    if history:
        iterations = np.array([row["iteration"] for row in history])
        terms = ["total"] + sorted(k for k in history[0] if k.startswith("loss_"))
        for term in terms:
            values = np.array([row[term] for row in history], dtype=np.float64)
            line, = losses_ax.plot(iterations, _running_mean(values, SMOOTHING), label=term,
                                   linewidth=2.0 if term == "total" else 1.0)
            losses_ax.plot(iterations, values, color=line.get_color(), alpha=0.2, linewidth=0.5)
        lr_ax.plot(iterations, [row["lr"] for row in history], color="black", linewidth=1)
    losses_ax.set(title=f"training losses (running mean over {SMOOTHING} iterations)", xlabel="iteration",
                  yscale="log")
    losses_ax.legend(fontsize=7, ncol=2)
    lr_ax.set(title="learning rate", xlabel="iteration")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
