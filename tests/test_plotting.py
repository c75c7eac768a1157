"""Figures: panels that are compared share one colour scale when asked to."""

import matplotlib
import torch

matplotlib.use("Agg")

from rome_lib.plotting import plot_traces  # noqa: E402
from rome_lib.tracing import TraceResult  # noqa: E402


def _result(scores: list[list[float]], low: float, window: int) -> TraceResult:
    return TraceResult(prompt="A B is in", subject="A B", kind="mlp", tokens=["A", " B", " is", " in"],
                       subject_range=(0, 2), answer=" X", answer_id=0,
                       scores=torch.tensor(scores), low=low, high=0.9, window=window)


def _limits(fig, n: int = 2) -> list[tuple[float, float]]:
    """(vmin, vmax) of the first ``n`` axes' heatmaps (colour bars come after them), rounded."""
    return [tuple(round(v, 6) for v in ax.collections[0].get_clim()) for ax in fig.axes[:n]]


def test_shared_scale_puts_every_panel_on_one_colour_scale():
    results = {1: _result([[0.1, 0.2]] * 4, low=0.05, window=1),
               4: _result([[0.3, 0.6]] * 4, low=0.08, window=4)}
    shared = plot_traces(results, shared_scale=True)
    assert _limits(shared) == [(0.05, 0.6)] * 2
    own = plot_traces(results)  # default: each panel its own scale
    assert _limits(own) == [(0.05, 0.2), (0.08, 0.6)]
