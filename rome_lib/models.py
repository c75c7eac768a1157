"""Load a model by name and describe where its parts live.

Everything else in rome_lib asks a :class:`Layout` for module names (``layout.mlp_out(17)``) instead
of hard-coding ``transformer.h.17.mlp.c_proj``, so GPT-2, GPT-J and Llama-style models share one code
path. Names accepted by :func:`load_model`:

* ``"toy"`` -- the embedded fact-world model shipped in this repository (offline, CPU, instant);
* hub ids ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``EleutherAI/gpt-j-6B`` (downloaded
  by transformers when the network allows, else taken from its cache);
* a local folder written by ``save_pretrained``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

TOY_DIR = Path(__file__).parent / "toyworld" / "assets"
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "EleutherAI/gpt-j-6B")
OFFLINE_HINT = (
    "The embedded model needs no download and runs on a CPU: load_model('toy') "
    "(or MODEL = 'toy' / ROME_MODEL=toy in the lessons, --model toy on the command line)."
)


class ModelNotAvailableError(RuntimeError):
    """The requested model cannot be loaded here (unknown name, no network and no cache, ...)."""


@dataclass(frozen=True)
class Layout:
    """Where the parts of a decoder-only transformer live, as module-name templates.

    ``{}`` in a template stands for the layer index. ``out_weight_transposed`` is True for GPT-2's
    ``Conv1D``, whose weight is stored as [in, out]; ``nn.Linear`` stores [out, in].
    """

    arch: str
    n_layer: int
    block: str
    attn: str
    mlp: str
    mlp_in: str
    mlp_out: str
    embed: str
    final_norm: str
    unembed: str
    out_weight_transposed: bool

    def layer(self, layer: int) -> str:
        """The whole block; its output is the residual stream h^(l)."""
        return self.block.format(self._check(layer))

    def attn_at(self, layer: int) -> str:
        return self.attn.format(self._check(layer))

    def mlp_at(self, layer: int) -> str:
        return self.mlp.format(self._check(layer))

    def mlp_in_at(self, layer: int) -> str:
        return self.mlp_in.format(self._check(layer))

    def mlp_out_at(self, layer: int) -> str:
        """The MLP's output projection: its *input* is the key k, its output the value v."""
        return self.mlp_out.format(self._check(layer))

    def module(self, kind: str, layer: int) -> str:
        """Module whose output is restored when tracing ``kind`` (state, mlp or attn)."""
        names = {"state": self.layer, "mlp": self.mlp_at, "attn": self.attn_at}
        if kind not in names:
            raise ValueError(f"Unknown kind {kind!r}: use one of {', '.join(names)}.")
        return names[kind](layer)

    def _check(self, layer: int) -> int:
        if not 0 <= layer < self.n_layer:
            raise IndexError(f"Layer {layer} does not exist: this model has layers 0..{self.n_layer - 1}.")
        return layer


def describe(model: nn.Module) -> Layout:
    """The :class:`Layout` of a transformers causal LM (GPT-2, GPT-J or Llama family)."""
    config = model.config
    kind = config.model_type
    if kind == "gpt2":
        return Layout(
            arch="gpt2", n_layer=config.n_layer, block="transformer.h.{}",
            attn="transformer.h.{}.attn", mlp="transformer.h.{}.mlp",
            mlp_in="transformer.h.{}.mlp.c_fc", mlp_out="transformer.h.{}.mlp.c_proj",
            embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
            out_weight_transposed=True,
        )
    if kind == "gptj":
        return Layout(
            arch="gptj", n_layer=config.n_layer, block="transformer.h.{}",
            attn="transformer.h.{}.attn", mlp="transformer.h.{}.mlp",
            mlp_in="transformer.h.{}.mlp.fc_in", mlp_out="transformer.h.{}.mlp.fc_out",
            embed="transformer.wte", final_norm="transformer.ln_f", unembed="lm_head",
            out_weight_transposed=False,
        )
    if kind in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"):
        return Layout(
            arch="llama", n_layer=config.num_hidden_layers, block="model.layers.{}",
            attn="model.layers.{}.self_attn", mlp="model.layers.{}.mlp",
            mlp_in="model.layers.{}.mlp.up_proj", mlp_out="model.layers.{}.mlp.down_proj",
            embed="model.embed_tokens", final_norm="model.norm", unembed="lm_head",
            out_weight_transposed=False,
        )
    raise ModelNotAvailableError(
        f"rome_lib does not know where the parts of a {kind!r} model live "
        "(supported: gpt2, gptj, llama-style)."
    )


@dataclass
class LoadedModel:
    """A model, its tokenizer and the description of its parts (the official code's ``mt``)."""

    model: nn.Module
    tokenizer: PreTrainedTokenizerBase
    layout: Layout
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_layer(self) -> int:
        return self.layout.n_layer


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve(name: str) -> tuple[str, dict]:
    """Map a user's name to a from_pretrained source and extra keyword arguments."""
    if name == "toy":
        return str(TOY_DIR), {}
    if os.path.isdir(name):
        return name, {}
    if name in HUB_MODELS or name.startswith("openai-community/") or "/" in name:
        return name, {}
    raise ModelNotAvailableError(
        f"Unknown model {name!r}. Use 'toy', one of {', '.join(HUB_MODELS)}, or a local folder "
        f"written by save_pretrained. {OFFLINE_HINT}"
    )


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a quick TCP check, no retries)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _from_pretrained(loader, name: str, source: str, what: str, **kwargs):
    """``loader.from_pretrained`` that prefers local files and fails fast and clearly when offline."""
    local = os.path.isdir(source)
    try:
        return loader.from_pretrained(source, local_files_only=True, **kwargs)
    except (OSError, ValueError) as error:
        if local or not hub_reachable():
            raise ModelNotAvailableError(
                f"Could not load the {what} of {name!r}: "
                + ("the folder does not hold a complete save_pretrained model. "
                   if local else "it is not in the local cache and the Hugging Face hub cannot "
                   "be reached (offline?). ")
                + OFFLINE_HINT
            ) from error
    try:
        return loader.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as error:
        raise ModelNotAvailableError(
            f"Could not load the {what} of {name!r}: {str(error).splitlines()[0]} {OFFLINE_HINT}"
        ) from error


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer for ``name`` (same names as :func:`load_model`), with a pad token set."""
    source, _ = _resolve(name)
    tokenizer = _from_pretrained(AutoTokenizer, name, source, "tokenizer")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return tokenizer


def load_model(
    name: str = "toy",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    tokenizer: str | PreTrainedTokenizerBase | None = None,
) -> LoadedModel:
    """Load ``name`` in eval mode with gradients off, on ``device`` (default: CUDA if present).

    ``dtype`` defaults to float32. ``tokenizer`` overrides the model's own (a name or folder as for
    models, or a tokenizer object) -- e.g. a random-weight model can borrow the toy tokenizer.
    """
    source, kwargs = _resolve(name)
    device = torch.device(device) if device is not None else default_device()
    model = _from_pretrained(AutoModelForCausalLM, name, source, "weights",
                             dtype=dtype or torch.float32, **kwargs)
    model.to(device).eval()
    model.requires_grad_(False)
    if tokenizer is None:
        tok = load_tokenizer(name)
    elif isinstance(tokenizer, str):
        tok = load_tokenizer(tokenizer)
    else:
        tok = tokenizer
    return LoadedModel(model=model, tokenizer=tok, layout=describe(model), name=name)
