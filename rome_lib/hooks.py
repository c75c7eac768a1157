"""Read and overwrite activations by module name, for the length of a ``with`` block.

This plays the role of baukit's ``nethook.TraceDict`` in the official ROME code, built on plain
PyTorch forward hooks. Every hook is removed when the block ends, also when it raises. (Named
``hook_modules``, not ``trace``: :func:`rome_lib.tracing.trace` is causal tracing.)

    with hook_modules(model, ["transformer.h.3.mlp"], edit_output=double) as rec:
        model(**inputs)
    rec["transformer.h.3.mlp"].output      # the (edited) output, detached

Modules such as GPT-2 attention return tuples; the *first* element is the activation that is read
and edited, the rest passes through untouched. ``stop=True`` ends the forward pass as soon as the
(one) traced module has been recorded, like nethook's ``stop``: statistics of layer 3 of 30 then
cost 4 layers, not 30.
"""

from __future__ import annotations

import contextlib
import difflib
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

EditFn = Callable[[torch.Tensor, str], torch.Tensor]


class StopForward(Exception):
    """Raised inside a hook to end the forward pass early; :func:`hook_modules` swallows it."""


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name``; a clear error with near names when there is none."""
    try:
        return model.get_submodule(name)  # a walk down the name, not over every module
    except AttributeError:
        pass
    modules = dict(model.named_modules())
    if name in modules:
        return modules[name]
    close = difflib.get_close_matches(name, modules.keys(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise KeyError(f"The model has no module called {name!r}.{hint}")


def main_tensor(value):
    """The activation inside a module's input/output (tuples carry it first)."""
    return value[0] if isinstance(value, tuple) else value


def _replace_main(value, new: torch.Tensor):
    return (new, *value[1:]) if isinstance(value, tuple) else new


@dataclass
class Recorded:
    """What one traced module saw during the block (tensors are detached)."""

    input: torch.Tensor | None = None
    output: torch.Tensor | None = None


@contextlib.contextmanager
def hook_modules(
    model: nn.Module,
    names: str | Sequence[str],
    *,
    retain_output: bool = True,
    retain_input: bool = False,
    edit_output: EditFn | None = None,
    edit_input: EditFn | None = None,
    detach: bool = True,
    stop: bool = False,
) -> Iterator[dict[str, Recorded]]:
    """Hook the named modules for the block's duration.

    ``edit_output(tensor, name)`` / ``edit_input(tensor, name)`` may return a replacement for the
    module's main output / first positional input. Recorded tensors are what the rest of the network
    saw (after editing). ``detach=False`` keeps the graph, e.g. for optimising through a hook.
    ``stop=True`` (one module only) ends the forward pass once that module's input (when only the
    input is retained) or output has been recorded: the model call raises :class:`StopForward`,
    which ends the ``with`` block (make the call its last statement) and is swallowed there.
    """
    if isinstance(names, str):
        names = [names]
    if stop and len(names) != 1:
        raise ValueError("stop=True traces exactly one module.")
    stop_at_input = stop and retain_input and not retain_output and edit_output is None
    records = {name: Recorded() for name in names}
    handles: list[torch.utils.hooks.RemovableHandle] = []

    def keep(t: torch.Tensor) -> torch.Tensor:
        return t.detach() if detach else t

    try:
        for name in names:
            module = get_module(model, name)

            if retain_input or edit_input is not None:

                def pre_hook(mod, args, _name=name):
                    if not args:
                        return None
                    x = args[0]
                    if edit_input is not None:
                        x = edit_input(x, _name)
                    if retain_input:
                        records[_name].input = keep(x)
                    if stop_at_input:
                        raise StopForward
                    return (x, *args[1:]) if edit_input is not None else None

                handles.append(module.register_forward_pre_hook(pre_hook))

            def post_hook(mod, args, output, _name=name):
                if edit_output is not None:
                    output = _replace_main(output, edit_output(main_tensor(output), _name))
                if retain_output:
                    records[_name].output = keep(main_tensor(output))
                if stop:
                    raise StopForward
                return output if edit_output is not None else None

            handles.append(module.register_forward_hook(post_hook))
        yield records
    except StopForward:
        pass
    finally:
        for handle in handles:
            handle.remove()
