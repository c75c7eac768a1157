"""A causal-tracing explorer for notebooks: pick a fact (or type a prompt and its subject), a kind and
a window, and see the heatmap and the model's top predictions; pin a layer to see every token's
effect at that layer beside the heatmap.

The logic is the plain function :func:`explore`, which tests and static notebooks call directly::

    fig, text = explore(mt, "The Space Needle is located in the city of", "Space Needle", "mlp")

:class:`TracingExplorer` wraps it in ipywidgets core widgets only (Dropdown, Text, IntSlider,
Button, Image, Textarea): the figure is sent as PNG bytes to an ``Image`` widget, so nothing needs a
browser extension beyond ipywidgets itself, and a notebook saved without widget state still shows
the static figure printed under it.
"""

from __future__ import annotations

import io

from ..models import LoadedModel
from ..plotting import plot_trace
from ..tokens import next_token_probs
from ..tracing import KINDS, default_noise, default_window, known_facts, trace

TOP_K = 5


def top_predictions(mt: LoadedModel, prompt: str, k: int = TOP_K) -> list[tuple[str, float]]:
    """The ``k`` most likely next tokens after ``prompt`` with their probabilities."""
    values, ids = next_token_probs(mt, prompt).topk(k)
    return [(mt.tokenizer.decode([i]), p) for i, p in zip(ids.tolist(), values.tolist())]


def explore(mt: LoadedModel, prompt: str, subject: str, kind: str = "state", window: int | None = None,
            *, samples: int = 10, noise: float | None = None, seed: int = 1,
            layer: int | None = None):
    """Trace ``prompt`` with ``subject`` corrupted; return ``(figure, text)``.

    ``figure`` is the heatmap of ``kind`` (matplotlib); ``text`` names the answer, the clean and
    corrupted probabilities, the strongest cell, and the clean top predictions. ``layer`` pins a
    layer: a panel beside the heatmap (and a line of text) gives every token's indirect effect at
    that layer. Raises ValueError for a subject that is not in the prompt, an unknown kind or a
    layer the model lacks (the widget shows the message).
    """
    import matplotlib.pyplot as plt

    if kind not in KINDS:
        raise ValueError(f"Unknown kind {kind!r}: use one of {', '.join(KINDS)}.")
    if layer is not None and not 0 <= layer < mt.n_layer:
        raise ValueError(f"Layer {layer} does not exist: this model has layers 0..{mt.n_layer - 1}.")
    window = window or default_window(mt.n_layer)
    result = trace(mt, prompt, subject, kind, samples=samples, noise=noise, window=window, seed=seed)
    height = 0.3 * len(result.tokens) + 1.4
    if layer is None:
        fig, ax = plt.subplots(figsize=(5, height), dpi=80)
        plot_trace(result, ax)
    else:
        fig, (ax, side) = plt.subplots(1, 2, figsize=(8, height), dpi=80, sharey=True,
                                       gridspec_kw={"width_ratios": [3, 2]})
        plot_trace(result, ax)
        ax.axvline(layer, color="tab:red", lw=1.5)
        effects = pinned_effects(result, layer)
        side.barh(range(len(effects)), effects, color="tab:red")
        side.axvline(0, color="grey", lw=0.8)
        side.set_title(f"layer {layer}: indirect effect")
        side.set_xlabel("P[answer] − corrupted")
    fig.tight_layout()
    plt.close(fig)  # shown by whoever asked for it, not twice by the inline backend
    t, l = divmod(int(result.scores.argmax()), result.scores.shape[1])
    lines = [
        f"answer {result.answer!r}: clean P = {result.high:.3f}, corrupted P = {result.low:.3f}",
        f"strongest cell ({kind}{'' if kind == 'state' else f', window {window}'}): token {t} "
        f"{result.tokens[t]!r}, layer {l}, P = {result.scores[t, l]:.3f}",
        "top predictions: " + ", ".join(f"{tok!r} {p:.3f}" for tok, p in top_predictions(mt, prompt)),
    ]
    if layer is not None:
        lines.append(f"layer {layer}, effect per token: " + ", ".join(
            f"{tok!r} {e:+.3f}" for tok, e in zip(result.tokens, pinned_effects(result, layer))))
    return fig, "\n".join(lines)


def pinned_effects(result, layer: int) -> list[float]:
    """Every token's indirect effect (restored P − corrupted P) at ``layer`` of a trace."""
    return result.indirect_effects[:, layer].tolist()


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def widget_bundle(widget, text: str, **kwargs) -> dict:
    """Display ``widget``; a saved notebook keeps only ``text`` (one line), not the widget tree."""
    bundle = widget._repr_mimebundle_(**kwargs)
    bundle = bundle[0] if isinstance(bundle, tuple) else bundle
    bundle["text/plain"] = text
    return bundle


class TracingExplorer:
    """The widget: ``TracingExplorer(mt).widget`` is an ipywidgets VBox to display.

    Choosing a fact fills the prompt and subject; changing the kind, window or pinned layer, or pressing
    "Trace", runs :func:`explore` again. ``last_text`` and ``image.value`` hold the latest result.
    """

    def __init__(self, mt: LoadedModel, facts: list[dict] | None = None, max_facts: int = 50,
                 samples: int = 10):
        import ipywidgets as w

        self.mt, self.samples = mt, samples
        self.noise = default_noise(mt)
        facts = (facts if facts is not None else known_facts(mt))[:max_facts]
        self.facts = {f"{f['prompt']} → {f.get('attribute', '?')}": f for f in facts}
        first = next(iter(self.facts.values()), {"prompt": "", "subject": ""})
        self.fact = w.Dropdown(options=["(type your own)", *self.facts], description="fact",
                               value=next(iter(self.facts), "(type your own)"),
                               layout=w.Layout(width="95%"))
        self.prompt = w.Text(value=first["prompt"], description="prompt", layout=w.Layout(width="95%"))
        self.subject = w.Text(value=first["subject"], description="subject")
        self.kind = w.Dropdown(options=list(KINDS), value="state", description="kind")
        self.window = w.IntSlider(value=default_window(mt.n_layer), min=1, max=mt.n_layer,
                                  description="window")
        self.layer = w.Dropdown(options=[("none", None)] + [(str(l), l) for l in range(mt.n_layer)],
                                value=None, description="pin layer")
        self.button = w.Button(description="Trace")
        self.image = w.Image(format="png")
        self.text = w.Textarea(layout=w.Layout(width="95%", height="5em"), disabled=True)
        self.last_text = ""
        self.fact.observe(self._on_fact, names="value")
        for control in (self.kind, self.window, self.layer):
            control.observe(lambda change: self.update(), names="value")
        self.button.on_click(lambda _: self.update())
        self.widget = w.VBox([self.fact, self.prompt, w.HBox([self.subject, self.kind]),
                              w.HBox([self.window, self.layer, self.button]), self.image, self.text])
        if first["prompt"]:
            self.update()

    def _repr_mimebundle_(self, **kwargs):
        return widget_bundle(self.widget, f"TracingExplorer({self.mt.name!r}): needs a running "
                             "kernel; a static figure follows", **kwargs)

    def _on_fact(self, change) -> None:
        fact = self.facts.get(change["new"])
        if fact is not None:
            self.prompt.value, self.subject.value = fact["prompt"], fact["subject"]
            self.update()

    def update(self) -> None:
        """Trace the current prompt and subject and show the result (or the error's message)."""
        try:
            fig, text = explore(self.mt, self.prompt.value, self.subject.value, self.kind.value,
                                self.window.value, samples=self.samples, noise=self.noise,
                                layer=self.layer.value)
        except ValueError as error:
            self.last_text = self.text.value = f"⚠ {error}"
            return
        self.image.value = figure_png(fig)
        self.last_text = self.text.value = text


__all__ = ["explore", "pinned_effects", "top_predictions", "figure_png", "TracingExplorer"]
