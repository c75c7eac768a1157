"""How long will it take? A rough forecast in seconds, from parameter count × tokens × passes.

A forward pass costs about 2 multiply-adds per parameter per token, so on one machine its time is
close to ``params · tokens / rate``. :data:`CPU_RATE` was calibrated on the machine this course was
written on (a 2-core x86 cloud VM shared with other jobs, PyTorch 2.x, float32, one thread):

- bare forward passes of random-weight GPT-2 models (4 blocks × d 256, 4 × 512, 2 × 768; batch
  8 × 128 tokens, ``torch.no_grad()``, best of three): 2.2e10, 2.3e10, 2.9e10 parameter·tokens/s;
- SmolLM2's C (4 of 30 blocks, 14 M parameters, ~1 M Wikipedia tokens, 18 min): 1.3e10;
- causal tracing with :func:`aie_tokens` (3 noise draws): SmolLM2, one fact, 251 s: 5.6e9;
  the toy model, 10 facts, 17 s: 3.1e9 (a small model is dominated by per-pass overhead).

- the toy model's C (5 of 8 blocks, 1 M parameters, 27,880 short texts in 1,743 batches): 207 s,
  almost all of it per-call overhead (tokenising, hooks, Python): ~0.1 s per batch.

Real loops add attention, padding, hooks and Python between passes, so we take the middle of the
real workloads, :data:`CPU_RATE` = 8e9 (ours), plus :data:`CALL_S` = 0.05 s (ours) per model call
where the caller knows the number of calls: forecasts within a factor of about two or three, which
is all they are for -- telling a learner "this takes 20 minutes; with 20 facts 4"
before they wait. With more threads the rate is scaled by ``threads ** 0.7`` (ours, a guess: more
threads could not be measured cleanly on the shared machine). Only CPUs are calibrated: on other
devices the forecast is None and nothing is printed.

    seconds = estimate_seconds(block_params(mt.model), aie_tokens(mt, facts, samples=10))
    announce("AIE over 100 facts", seconds, "fewer facts (n=20), fewer noise draws, or a GPU")

:func:`warn_if_long` does both for a loaded model; ``aie_tokens``, ``cov_tokens`` and
``edit_tokens`` count the tokens of the course's long computations.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator, TextIO

import torch
from torch import nn

CPU_RATE = 8e9  # parameter·tokens per second, one thread (see the module docstring)
THREAD_EXPONENT = 0.7  # rate × threads ** 0.7 (ours, unmeasured)
CALL_S = 0.05  # seconds of overhead per model call (see the module docstring)
LONG_S = 60.0  # announce computations longer than this
CHARS_PER_TOKEN = 4  # English BPE, rough (ours)
_STREAM: list[TextIO] = []  # where announcements go when no file is given (empty: stdout)


@contextlib.contextmanager
def announcements_to(stream: TextIO) -> Iterator[None]:
    """Send announcements to ``stream`` inside the block (the command line: stderr, so that stdout
    stays one JSON object); elsewhere they go to stdout, where a notebook keeps them as text."""
    _STREAM.append(stream)
    try:
        yield
    finally:
        _STREAM.pop()


def block_params(model: nn.Module, layers: int | None = None) -> int:
    """Parameters every token goes through: all but the input embeddings (and an untied output
    head, which the course's long loops apply to one position only). ``layers``: only the first
    ``layers`` blocks count (a pass stopped early, as for C) -- a proportional share."""
    total = sum(p.numel() for p in model.parameters())
    skip = {id(p) for m in (model.get_input_embeddings(), model.get_output_embeddings()) if m is not None
            for p in m.parameters()}
    blocks = total - sum(p.numel() for p in model.parameters() if id(p) in skip)
    n_layer = getattr(model.config, "num_hidden_layers", None) or getattr(model.config, "n_layer", None)
    if layers is not None and n_layer:
        blocks = blocks * min(layers, n_layer) // n_layer
    return int(blocks)


def estimate_seconds(n_params: int, tokens: float, passes: float = 1.0, device: str | torch.device = "cpu",
                     threads: int | None = None, calls: int = 0) -> float | None:
    """Forecast seconds for ``passes`` forward-pass equivalents (a backward pass counts 2) over
    ``tokens`` tokens through ``n_params`` parameters, in ``calls`` model calls (batches) when known;
    None on devices that are not calibrated."""
    if torch.device(device).type != "cpu":
        return None
    threads = threads or torch.get_num_threads()
    return n_params * tokens * passes / (CPU_RATE * threads ** THREAD_EXPONENT) + calls * CALL_S


def format_seconds(seconds: float) -> str:
    """``"45 s"``, ``"12 min"``, ``"2.5 h"``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def announce(what: str, seconds: float | None, cheaper: str, *, threshold: float = LONG_S,
             file: TextIO | None = None) -> bool:
    """Print one line "<what> will take about <t> on this CPU; cheaper: <cheaper>" when the
    forecast exceeds ``threshold`` seconds (to ``file``, default stdout or the stream set by
    :func:`announcements_to`); whether it printed."""
    if seconds is None or seconds <= threshold:
        return False
    threads = torch.get_num_threads()
    print(f"{what} will take about {format_seconds(seconds)} on this CPU "
          f"({threads} thread{'s' * (threads > 1)}; a rough forecast). Cheaper: {cheaper}.",
          file=file or (_STREAM[-1] if _STREAM else sys.stdout), flush=True)
    return True


def warn_if_long(mt, what: str, tokens: float, cheaper: str, *, passes: float = 1.0,
                 layers: int | None = None, calls: int = 0, file: TextIO | None = None) -> float | None:
    """Forecast a computation on the loaded model ``mt`` and :func:`announce` it when long.

    Returns the forecast in seconds (None off the CPU). Lesson cells call it before a long loop::

        warn_if_long(mt, f"AIE over {len(facts)} facts", aie_tokens(mt, facts, samples=10),
                     "fewer facts (N_FACTS = 20), fewer noise draws, or a GPU")
    """
    seconds = estimate_seconds(block_params(mt.model, layers), tokens, passes, mt.device, calls=calls)
    announce(what, seconds, cheaper, file=file)
    return seconds


def aie_tokens(mt, facts, samples: int = 10, kinds: int = 3) -> int:
    """Tokens of causal tracing over ``facts``: per fact and kind, one row of T tokens per (token,
    layer) cell and noise draw -- T² · layers · samples (the batched trace skips some cells; an
    upper bound)."""
    lengths = [len(mt.tokenizer(f["prompt"])["input_ids"]) for f in facts]
    return sum(t * t for t in lengths) * mt.n_layer * samples * kinds


def cov_tokens(texts, max_length: int) -> int:
    """Tokens of C over ``texts``: each text cut at ``max_length`` tokens (≈ 4 characters each)."""
    return sum(min(len(t) // CHARS_PER_TOKEN + 1, max_length) for t in texts)


def edit_tokens(n_steps: int = 20, n_prompts: int = 22, prompt_tokens: int = 15) -> int:
    """Forward-pass-equivalent tokens of one ROME v* optimisation (or one fine-tuning run):
    ``n_steps`` forward + backward passes (3 forward-equivalents) over the context-template prompts
    (official presets: 20 templates + the prompt + the KL prompt)."""
    return 3 * n_steps * n_prompts * prompt_tokens


__all__ = ["CPU_RATE", "LONG_S", "announcements_to", "block_params", "estimate_seconds", "format_seconds", "announce",
           "warn_if_long", "aie_tokens", "cov_tokens", "edit_tokens"]
