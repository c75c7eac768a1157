"""An editing playground for notebooks: type a subject, a prompt and a new object, apply ROME, compare
probabilities and generations before and after, and undo.

The logic is the plain function :func:`run_edit`, which tests and static notebooks call directly::

    result = run_edit(mt, "Zanbrol Degek is a native speaker of", "Zanbrol Degek", "Russian")
    print(result["text"])      # probabilities and generations before / after
    result["edit"].undo()      # the weights are restored bit for bit

:class:`EditPlayground` wraps it in ipywidgets core widgets only (Dropdown, Text, Textarea, Button):
"Apply ROME" undoes the playground's previous edit (if any) and applies the new one at the chosen
layer (default: the preset's) and reports its ES / PS / NS, "Undo" restores the original weights. A notebook saved without widget state shows the static text printed under it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Sequence

import torch

from ..evaluation import generate, object_probs, record_metrics, score_record
from ..hparams import ROMEHyperParams
from ..models import LoadedModel
from ..rome import Edit, apply_rome
from .tracing_explorer import top_predictions, widget_bundle

GEN_LENGTH = 30


def as_request(prompt: str, subject: str, target: str) -> dict:
    """The official request format from a prompt that contains the subject (or a ``{}``)."""
    subject = subject.strip()
    if not subject:
        raise ValueError("Type a subject.")
    if "{}" not in prompt:
        if subject not in prompt:
            raise ValueError(f"The subject {subject!r} does not occur in the prompt {prompt!r}.")
        prompt = prompt.replace(subject, "{}", 1)
    if not target.strip():
        raise ValueError("Type the new object.")
    return {"prompt": prompt, "subject": subject, "target_new": {"str": target.strip()}}


def _fmt_table(rows: list[tuple[str, float, float, float | None, float | None]], old: str, new: str) -> list[str]:
    width = min(48, max(len(r[0]) for r in rows))
    head = f"{'prompt':<{width}}  P[{new.strip()}] before → after"
    if old:
        head += f"   P[{old.strip()}] before → after"
    lines = [head]
    for text, nb, na, ob, oa in rows:
        short = text if len(text) <= width else "…" + text[-(width - 1):]
        line = f"{short:<{width}}  {nb:8.3f} → {na:.3f}"
        if ob is not None:
            line += f"   {ob:8.3f} → {oa:.3f}"
        lines.append(line)
    return lines


def run_edit(
    mt: LoadedModel,
    prompt: str,
    subject: str,
    target: str,
    *,
    old: str | None = None,
    probes: list[str] | tuple[str, ...] = (),
    hparams: ROMEHyperParams | None = None,
    templates: list[str] | None = None,
    gen_length: int = GEN_LENGTH,
    layer: int | None = None,
    paraphrases: Sequence[str] = (),
    neighbours: Sequence[str] = (),
) -> dict:
    """Apply ROME for (``subject``, ``prompt``, ``target``) and compare the model before and after.

    ``prompt`` contains the subject (or ``{}``). ``old`` is the object to compare with (default: the
    model's top next token before the edit). ``probes`` are more prompts to score (paraphrases,
    other subjects). Returns a dict with the ``edit`` (still applied: call ``edit.undo()``), the
    probabilities per prompt before/after, the top predictions and greedy generations before/after,
    and ``text``, a printable summary. ``layer`` edits another layer than the preset's. ``scores``
    holds the edit's ES / PS / NS (0..1, as CounterFact: the new object beats the old one on the
    prompt / on each of ``paraphrases``; the old one still beats the new one on each of
    ``neighbours``, prompts about other subjects); PS and NS only when such prompts are given.
    Raises ValueError for a subject not in the prompt or a layer the model lacks.
    """
    request = as_request(prompt, subject, target)
    full = request["prompt"].format(request["subject"])
    new = " " + request["target_new"]["str"]
    hparams = hparams or ROMEHyperParams.for_model(mt.name, mt.n_layer)
    if layer is not None:
        if not 0 <= layer < mt.n_layer:
            raise ValueError(f"Layer {layer} does not exist: this model has layers 0..{mt.n_layer - 1}.")
        hparams = replace(hparams, layer=layer)
    before_top = top_predictions(mt, full, 3)
    old = (" " + old.strip()) if old and old.strip() else before_top[0][0]
    prompts = [full] + [p.strip() for p in probes if p.strip()]
    gen_prompts = [full, f"{request['subject']} is"]

    def measure():
        with torch.no_grad():
            p_new = object_probs(mt, prompts, [new] * len(prompts)).tolist()
            p_old = object_probs(mt, prompts, [old] * len(prompts)).tolist() if old.strip() else None
        texts = generate(mt, gen_prompts, max_length=len(mt.tokenizer(full)["input_ids"]) + gen_length,
                         greedy=True)
        return p_new, p_old, texts

    nb, ob, gen_before = measure()
    edit: Edit = apply_rome(mt, request, hparams, templates=templates)
    try:
        na, oa, gen_after = measure()
        after_top = top_predictions(mt, full, 3)
        scores = edit_scores(mt, request, old, paraphrases, neighbours)
    except Exception:
        edit.undo()
        raise
    rows = [(p, nb[i], na[i], ob[i] if ob else None, oa[i] if oa else None) for i, p in enumerate(prompts)]
    history = edit.info["history"]
    lines = [
        f"ROME at layer {edit.layer}: {full!r} → {new!r} ({len(history)} loss evaluations, "
        f"P[{new.strip()}] during the optimisation {history[0]['p_target']:.3f} → {history[-1]['p_target']:.3f})",
        "edit scores: " + "  ".join(f"{k} {100 * v:.0f}" for k, v in scores.items())
        + f"  (over 1 prompt, {len(paraphrases)} paraphrase(s), {len(neighbours)} other subject(s))",
        "",
        *_fmt_table(rows, old, new),
        "",
        "top next tokens before: " + ", ".join(f"{t!r} {p:.2f}" for t, p in before_top),
        "top next tokens after:  " + ", ".join(f"{t!r} {p:.2f}" for t, p in after_top),
    ]
    for prompt_text, a, b in zip(gen_prompts, gen_before, gen_after):
        lines += ["", f"generation before: {json.dumps(a, ensure_ascii=False)}",
                  f"generation after:  {json.dumps(b, ensure_ascii=False)}"]
    return {
        "edit": edit, "request": request, "old": old, "new": new, "prompts": prompts,
        "p_new_before": nb, "p_new_after": na, "p_old_before": ob, "p_old_after": oa,
        "top_before": before_top, "top_after": after_top,
        "generations_before": gen_before, "generations_after": gen_after, "scores": scores,
        "layer": edit.layer, "text": "\n".join(lines),
    }


def edit_scores(mt: LoadedModel, request: dict, old: str, paraphrases: Sequence[str] = (),
                neighbours: Sequence[str] = ()) -> dict[str, float]:
    """ES / PS / NS (0..1) of the model as it is now, for ``request`` against the ``old`` object."""
    record = {"requested_rewrite": {**request, "target_true": {"str": old.strip()}},
              "paraphrase_prompts": [p for p in paraphrases if p.strip()],
              "neighborhood_prompts": [p for p in neighbours if p.strip()]}
    metrics = record_metrics(score_record(mt, record))
    return {k: metrics[k] for k in ("ES", "PS", "NS") if k in metrics}


def _example(record: dict) -> dict:
    rw = record["requested_rewrite"]
    return {"prompt": rw["prompt"].format(rw["subject"]), "subject": rw["subject"],
            "target": rw["target_new"]["str"], "old": rw["target_true"]["str"],
            "probes": list(record.get("paraphrase_prompts", []))[:1]
            + list(record.get("neighborhood_prompts", []))[:2],
            "paraphrases": list(record.get("paraphrase_prompts", [])),
            "neighbours": list(record.get("neighborhood_prompts", []))}


class EditPlayground:
    """The widget: ``EditPlayground(mt).widget`` is an ipywidgets VBox to display.

    ``records`` (CounterFact format; default: the set beside the model's weights) fill the example
    dropdown. "Apply ROME" runs :func:`run_edit` (undoing the playground's previous edit first);
    "Undo" restores the weights. ``last_text`` and ``edit`` hold the latest state.
    """

    def __init__(self, mt: LoadedModel, records: list[dict] | None = None, *,
                 hparams: ROMEHyperParams | None = None, templates: list[str] | None = None,
                 max_examples: int = 30):
        import ipywidgets as w

        self.mt, self.hparams, self.templates = mt, hparams, templates
        if records is None:
            path = mt.data_file("counterfact.json")
            records = json.loads(path.read_text()) if path else []
        self.examples = {}
        for r in records[:max_examples]:
            ex = _example(r)
            self.examples[f"{ex['prompt']} → {ex['target']} (was {ex['old']})"] = ex
        self.edit: Edit | None = None
        self.last_text = ""
        layout = w.Layout(width="95%")
        self.example = w.Dropdown(options=["(type your own)", *self.examples], description="example",
                                  layout=layout)
        self.prompt = w.Text(description="prompt", layout=layout)
        self.subject = w.Text(description="subject")
        self.target = w.Text(description="new object")
        self.old = w.Text(description="old object")
        self.probes = w.Textarea(description="also score", layout=w.Layout(width="95%", height="4.5em"),
                                 placeholder="more prompts, one per line (paraphrases, other subjects)")
        self.paraphrases = w.Textarea(description="paraphrases", layout=w.Layout(width="95%", height="4.5em"),
                                      placeholder="for PS: the same fact in other words, one per line")
        self.neighbours = w.Textarea(description="others", layout=w.Layout(width="95%", height="4.5em"),
                                     placeholder="for NS: other subjects with the old object, one per line")
        preset = (hparams or ROMEHyperParams.for_model(mt.name, mt.n_layer)).layer
        self.layer = w.Dropdown(options=list(range(mt.n_layer)), value=preset,
                                description="layer")
        self.apply_button = w.Button(description="Apply ROME", button_style="primary")
        self.undo_button = w.Button(description="Undo", disabled=True)
        self.text = w.Textarea(layout=w.Layout(width="95%", height="22em"), disabled=True)
        self.example.observe(self._on_example, names="value")
        self.apply_button.on_click(lambda _: self.apply())
        self.undo_button.on_click(lambda _: self.undo())
        self.widget = w.VBox([self.example, self.prompt, w.HBox([self.subject, self.target, self.old]),
                              self.probes, self.paraphrases, self.neighbours,
                              w.HBox([self.layer, self.apply_button, self.undo_button]), self.text])
        if self.examples:
            self.example.value = next(iter(self.examples))

    def _repr_mimebundle_(self, **kwargs):
        return widget_bundle(self.widget, f"EditPlayground({self.mt.name!r}): needs a running "
                             "kernel; a static result follows", **kwargs)

    def _on_example(self, change) -> None:
        ex = self.examples.get(change["new"])
        if ex is not None:
            self.prompt.value, self.subject.value = ex["prompt"], ex["subject"]
            self.target.value, self.old.value = ex["target"], ex["old"]
            self.probes.value = "\n".join(ex["probes"])
            self.paraphrases.value = "\n".join(ex["paraphrases"])
            self.neighbours.value = "\n".join(ex["neighbours"])

    def _show(self, text: str) -> None:
        self.last_text = self.text.value = text

    def apply(self) -> None:
        """Undo the previous edit (if any), apply the current one, show before/after."""
        if self.edit is not None and self.edit.applied:
            self.edit.undo()
        self.edit = None
        try:
            result = run_edit(self.mt, self.prompt.value, self.subject.value, self.target.value,
                              old=self.old.value, probes=self.probes.value.splitlines(),
                              hparams=self.hparams, templates=self.templates, layer=self.layer.value,
                              paraphrases=self.paraphrases.value.splitlines(),
                              neighbours=self.neighbours.value.splitlines())
        except ValueError as error:
            self._show(f"⚠ {error}")
            self.undo_button.disabled = True
            return
        self.edit = result["edit"]
        self.undo_button.disabled = False
        self._show(result["text"])

    def undo(self) -> None:
        """Restore the weights the edit changed (bit for bit) and say so."""
        if self.edit is None or not self.edit.applied:
            self._show("Nothing to undo.")
            return
        edit, self.edit = self.edit, None
        edit.undo()
        exact = all(torch.equal(p, edit.originals[n]) for n, p in edit.parameters().items())
        self.undo_button.disabled = True
        self._show(f"Undone: {edit.describe()}; weights restored bit for bit: {exact}.\n\n"
                   + self.last_text)


__all__ = ["as_request", "run_edit", "edit_scores", "EditPlayground"]
