"""Fine-tuning baselines of the paper's Tables 1 and 4 (App. E.1): FT and FT+L (official ``baselines/ft``).

Both fine-tune one weight -- the MLP output projection of a chosen layer -- on the new fact alone:
Adam on the mean teacher-forced NLL of the new object (leading space, all of its tokens) after the
rewrite prompt. FT+L ("constrained") projects the change back into the L∞ ball ‖W − W₀‖∞ ≤ ε after
every step (Zhu et al. 2020), which keeps the model closer to the original at the price of
generalisation. Hyper-parameters: :class:`rome_lib.hparams.FTHyperParams`.

Differences from the official code, on purpose: the official loss reads *all* target tokens at the
prompt's last position (a known quirk for multi-token objects); here every token is predicted at its
own position, as everywhere else in rome_lib. The official FT also trains the layer's bias; only the
weight is trained here (as ROME changes only the weight). The optimisation runs on a float32 copy of
the weight even when the model is float16/bfloat16.

The result is the same :class:`rome_lib.edits.Edit` as ROME's: ``undo()`` restores the weight bit for
bit, edits stack and undo in LIFO order, and it works as a context manager.
"""

from __future__ import annotations

import torch
from torch.func import functional_call

from .hparams import FTHyperParams
from .models import LoadedModel
from .edits import Edit, normalize_request, target_ids, warn_if_already_predicted


def apply_ft(
    mt: LoadedModel,
    request: dict,
    hparams: FTHyperParams | None = None,
    *,
    constrained: bool = False,
) -> Edit:
    """Fine-tune ``mt`` in place on ``request`` (official request format); return the :class:`Edit`.

    ``hparams`` defaults to ``FTHyperParams.for_model(mt.name, constrained)``; when given, its own
    ``norm_constraint`` decides between FT (None) and FT+L. ``edit.info["history"]`` lists the losses.
    """
    request = normalize_request(request)
    if hparams is None:
        hparams = FTHyperParams.for_model(mt.name, constrained, mt.n_layer)
    name = mt.layout.mlp_out_at(hparams.layer) + ".weight"
    param = dict(mt.model.named_parameters())[name]
    tgt = target_ids(mt, request["target_new"]["str"])
    warn_if_already_predicted(mt, request, tgt)

    prompt_ids = mt.tokenizer(request["prompt"].format(request["subject"]))["input_ids"]
    ids = torch.tensor([prompt_ids + tgt], device=mt.device)
    pos = torch.arange(len(prompt_ids) - 1, len(prompt_ids) - 1 + len(tgt), device=mt.device)
    tgt_t = torch.tensor(tgt, device=mt.device)

    w0 = param.detach().float().clone()
    master = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([master], lr=hparams.lr, weight_decay=hparams.weight_decay)
    eps = hparams.norm_constraint
    history = []
    with torch.enable_grad():
        for _ in range(hparams.num_steps):
            opt.zero_grad()
            logits = functional_call(mt.model, {name: master.to(param.dtype)}, (ids,)).logits
            logp = torch.log_softmax(logits[0, pos].float(), -1)
            loss = -logp[torch.arange(len(tgt), device=mt.device), tgt_t].mean()
            history.append(loss.item())
            if loss.item() < hparams.early_stop_loss:
                break
            loss.backward()
            opt.step()
            if eps is not None:
                with torch.no_grad():
                    master.copy_(torch.maximum(torch.minimum(master, w0 + eps), w0 - eps))

    edit = Edit.begin(mt, "ft-l" if eps is not None else "ft", request, hparams.layer, [name])
    with torch.no_grad():
        param.copy_(master.detach().to(param.dtype))
    edit.info.update(history=history, delta_max=(master.detach() - w0).abs().max().item(),
                     hparams=hparams)
    return edit


def apply_ft_l(mt: LoadedModel, request: dict, hparams: FTHyperParams | None = None) -> Edit:
    """FT+L: :func:`apply_ft` with the L∞ constraint (default ε from the preset)."""
    return apply_ft(mt, request, hparams, constrained=True)


__all__ = ["apply_ft", "apply_ft_l"]
