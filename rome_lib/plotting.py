"""Figures: causal-tracing heatmaps (paper Fig. 1) and AIE curves (Figs. 2-3)."""

from __future__ import annotations

import matplotlib

from .tracing import AIEResult, TraceResult

KIND_TITLES = {"state": "single restored layer", "mlp": "restored MLP", "attn": "restored attention"}
KIND_COLORMAPS = {"state": "Purples", "mlp": "Greens", "attn": "Reds"}
BUCKET_LABELS = ("First subject token", "Middle subject tokens", "Last subject token",
                 "First subsequent token", "Further tokens", "Last token")


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def plot_trace(result: TraceResult, ax=None, vmin: float | None = None, vmax: float | None = None):
    """Heatmap of P[answer] with one cell restored; subject tokens are starred, as in the paper.

    The colour scale runs from ``vmin`` (default: the lower of the corrupted P and the smallest
    score) to ``vmax`` (default: the largest score); pass both to compare panels on one scale.
    """
    plt = _pyplot()
    if ax is None:
        _, ax = plt.subplots(figsize=(4.5, 0.3 * len(result.tokens) + 1.2), dpi=100)
    b, e = result.subject_range
    labels = [tok + ("*" if b <= i < e else "") for i, tok in enumerate(result.tokens)]
    if vmin is None:
        vmin = min(result.low, result.scores.min().item())
    image = ax.pcolormesh(result.scores.numpy(), cmap=KIND_COLORMAPS[result.kind], vmin=vmin, vmax=vmax)
    ax.invert_yaxis()
    ax.set_yticks([i + 0.5 for i in range(len(labels))], labels)
    step = max(1, result.scores.shape[1] // 8)
    ax.set_xticks([i + 0.5 for i in range(0, result.scores.shape[1], step)],
                  list(range(0, result.scores.shape[1], step)))
    window = "" if result.kind == "state" else f" (window {result.window})"
    ax.set_title(f"Impact of {KIND_TITLES[result.kind]}{window}", fontsize=10)
    ax.set_xlabel(f"layer; corrupted P = {result.low:.3f}, clean P = {result.high:.3f}", fontsize=8)
    cbar = plt.colorbar(image, ax=ax)
    cbar.ax.set_title(f"p({result.answer.strip()})", fontsize=8)
    return ax


def plot_traces(results: dict, path: str | None = None, shared_scale: bool = False):
    """Heatmaps side by side; saved as PNG when ``path`` is given.

    ``shared_scale=True`` puts every panel on one colour scale (lowest corrupted P or score to the
    highest score), so that equal colours mean equal P: use it whenever the panels are compared, e.g.
    one kind traced with different windows. Each panel keeps its own scale otherwise.
    """
    plt = _pyplot()
    n_tokens = len(next(iter(results.values())).tokens)
    fig, axes = plt.subplots(1, len(results), figsize=(4.8 * len(results), 0.3 * n_tokens + 1.6),
                             dpi=100, squeeze=False)
    limits = {}
    if shared_scale:
        limits = {"vmin": min(min(r.low, r.scores.min().item()) for r in results.values()),
                  "vmax": max(r.scores.max().item() for r in results.values())}
    for ax, result in zip(axes[0], results.values()):
        plot_trace(result, ax, **limits)
    fig.tight_layout()
    if path:
        fig.savefig(path)
        plt.close(fig)
    return fig


def plot_aie(result: AIEResult, path: str | None = None):
    """AIE per layer for each token bucket, one panel per kind (paper Fig. 2)."""
    plt = _pyplot()
    kinds = list(result.kinds)
    fig, axes = plt.subplots(1, len(kinds), figsize=(4.5 * len(kinds), 3.4), dpi=100, squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        values = result.kinds[kind].numpy()
        image = ax.imshow(values, aspect="auto", cmap=KIND_COLORMAPS[kind], vmin=0)
        ax.set_yticks(range(len(BUCKET_LABELS)), BUCKET_LABELS, fontsize=8)
        ax.set_xlabel("layer")
        ax.set_title(f"AIE, {KIND_TITLES[kind]} (n={result.n})", fontsize=9)
        plt.colorbar(image, ax=ax)
    fig.tight_layout()
    if path:
        fig.savefig(path)
        plt.close(fig)
    return fig


def use_file_backend() -> None:
    """Render without a screen (command line, CI)."""
    matplotlib.use("Agg")
