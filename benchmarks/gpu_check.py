"""GPU check at the paper's scale, with no network: random-weight models of the real configs.

    python benchmarks/gpu_check.py                           # on one H100/H200, < 8 minutes
    python benchmarks/gpu_check.py --n-layer 2 --device cpu  # shrunk models: proves it runs on a CPU

1. gpt2-xl (real config, random weights, float16 on CUDA): the full three-kind causal trace of a
   10-token prompt, batched (rome_lib.tracing.trace) vs the per-cell reference loop (one forward
   pass per cell, as the official code). The reference runs on every cell unless that exceeds
   ``--ref-budget-s`` per kind; then it runs on a random subset of cells and its time is
   extrapolated to all cells (the output says so: "reference_cells" < "cells").
2. The key statistics C at ROME's layer over a generated token stream (uniformly random token ids,
   decoded to text): tokens per second (rome_lib.covariance.compute_mom2).
3. One ROME edit with that C (seconds; the official hyperparameters for gpt2-xl), with the check
   Ŵk* ≈ v* (relative residual; exact in float32, float16 rounding on the GPU) and a bit-exact undo.
4. A GPT-J-sized model (real config, random weights, float16): one state trace and one ROME edit
   (C = I there: the 16,384-wide C and its float64 solve would dominate the time; said in the output).

Prints progress on stderr and ONE JSON line on stdout. Tokenizer: the embedded toy tokenizer when
rome_lib/toyworld/assets has one, else a small byte-level BPE trained here on synthetic text (the
models keep the real 50,257 / 50,400-token vocabularies either way).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rome_lib.covariance import compute_mom2  # noqa: E402
from rome_lib.hooks import get_module  # noqa: E402
from rome_lib.hparams import ROMEHyperParams  # noqa: E402
from rome_lib.models import TOY_DIR, LoadedModel, describe, preset_config  # noqa: E402
from rome_lib.rome import apply_rome, project  # noqa: E402
from rome_lib.tracing import (  # noqa: E402
    KINDS, _patched_probability, _prepare, _restored_layers, default_noise, default_window, trace,
)

WORDS = ("The Space Needle is located in the city of Seattle and Michael Jordan plays the sport of "
         "basketball while Danielle Darrieux was a French actress born in Bordeaux").split()


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(device, fn):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def get_tokenizer():
    """The toy tokenizer when it exists, else a byte-level BPE trained on synthetic sentences."""
    if (TOY_DIR / "tokenizer.json").is_file() or (TOY_DIR / "vocab.json").is_file():
        from rome_lib.models import load_tokenizer

        return load_tokenizer("toy"), "toy"
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    rng = random.Random(0)
    text = [" ".join(rng.choices(WORDS, k=12)) for _ in range(200)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(text, trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=["<|endoftext|>"]))
    eos = "<|endoftext|>"
    out = GPT2TokenizerFast(tokenizer_object=tok, eos_token=eos, bos_token=eos, unk_token=eos)
    out.pad_token = eos
    return out, "synthetic BPE (toy tokenizer not built yet)"


def build(name: str, tokenizer, device, dtype, **overrides) -> LoadedModel:
    """Random weights of ``name``'s real config (``overrides`` shrink it), made directly on ``device``."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    config = preset_config(name, **overrides)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval().requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, layout=describe(model), name=f"random-{name}")


def prompt_of(tokenizer, n_tokens: int) -> tuple[str, str]:
    """A prompt of exactly ``n_tokens`` tokens (when the tokenizer allows) starting with its subject."""
    subject, words = "The Space Needle", WORDS[3:]
    prompt = subject
    for w in words * 3:
        longer = f"{prompt} {w}"
        if len(tokenizer(longer)["input_ids"]) > n_tokens:
            break
        prompt = longer
    return prompt, subject


def reference_cells(mt, prompt, subject, kind, samples, noise, answer_id, batched, budget_s, rng):
    """The per-cell reference on all cells, or on a random subset when ``budget_s`` runs out."""
    setup = _prepare(mt, prompt, subject, samples, noise, 1, answer_id)
    n_tokens, n_layer = setup.ids.shape[1], mt.n_layer
    window = default_window(n_layer)
    cells = [(t, l) for t in range(n_tokens) for l in range(n_layer)]
    rng.shuffle(cells)
    done, max_diff = 0, 0.0
    sync(mt.device)
    start = time.perf_counter()
    for t, l in cells:
        patch = {mt.layout.module(kind, x): [t] for x in _restored_layers(kind, l, window, n_layer)}
        score, _ = _patched_probability(mt, setup, patch)
        max_diff = max(max_diff, abs(score - batched.scores[t, l].item()))
        done += 1
        if time.perf_counter() - start > budget_s:
            break
    sync(mt.device)
    spent = time.perf_counter() - start
    return {"cells": len(cells), "reference_cells": done, "max_abs_diff": max_diff,
            "reference_s": spent if done == len(cells) else spent * len(cells) / done,
            "reference_extrapolated": done < len(cells)}


def trace_check(mt, prompt, subject, kinds, samples, budget_s) -> dict:
    noise = default_noise(mt, [subject])
    first = trace(mt, prompt, subject, "state", samples=samples, noise=noise)  # warm-up
    rng, out = random.Random(0), {"tokens": len(first.tokens), "layers": mt.n_layer, "kinds": {}}
    total_batched = total_reference = 0.0
    for kind in kinds:
        batched, seconds = timed(mt.device, lambda: trace(mt, prompt, subject, kind, samples=samples,
                                                          noise=noise, answer_id=first.answer_id))
        ref = reference_cells(mt, prompt, subject, kind, samples, noise, first.answer_id, batched,
                              budget_s, rng)
        out["kinds"][kind] = {"batched_s": round(seconds, 3), **ref}
        total_batched += seconds
        total_reference += ref["reference_s"]
        log(f"  {kind}: batched {seconds:.2f}s, reference {ref['reference_s']:.2f}s "
            f"({ref['reference_cells']}/{ref['cells']} cells), max |diff| {ref['max_abs_diff']:.1e}")
    out.update(batched_s=round(total_batched, 3), reference_s=round(total_reference, 3),
               speedup=round(total_reference / total_batched, 1),
               max_abs_diff=max(k["max_abs_diff"] for k in out["kinds"].values()),
               reference_extrapolated=any(k["reference_extrapolated"] for k in out["kinds"].values()))
    return out


def edit_check(mt, hparams, cov) -> dict:
    saved = {n: p.detach().clone() for n, p in mt.model.named_parameters()}
    request = {"prompt": "{} is located in the city of", "subject": "The Space Needle",
               "target_new": {"str": "Paris"}}
    edit, seconds = timed(mt.device, lambda: apply_rome(mt, request, hparams, cov=cov))
    module = get_module(mt.model, mt.layout.mlp_out_at(hparams.layer))
    after = project(module, mt.layout.out_weight_transposed, edit.info["k_star"]).cpu()
    v_star = edit.info["v_star"].float().cpu()
    history = edit.info["history"]
    edit.undo()
    exact = all(torch.equal(p, saved[n]) for n, p in mt.model.named_parameters())
    return {"seconds": round(seconds, 3), "layer": hparams.layer, "steps": len(history),
            "p_target_first": history[0]["p_target"], "p_target_last": history[-1]["p_target"],
            "relative_residual": ((after - v_star).norm() / v_star.norm()).item(),
            "undo_bit_exact": exact, "cov": "identity" if cov is None and not hparams.mom2_adjustment
            else "stream"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float16 on CUDA, float32 on a CPU (default)")
    parser.add_argument("--n-layer", type=int, default=None, help="shrink both models to this depth")
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=10, help="prompt length in tokens")
    parser.add_argument("--ref-budget-s", type=float, default=45.0,
                        help="per-kind time for the per-cell reference before it is extrapolated")
    parser.add_argument("--cov-texts", type=int, default=2000, help="texts of --cov-length tokens")
    parser.add_argument("--cov-length", type=int, default=128)
    parser.add_argument("--skip-gptj", action="store_true")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (
        torch.float16 if device.type == "cuda" else torch.float32)
    torch.set_num_threads(min(torch.get_num_threads(), 16))
    started = time.perf_counter()
    tokenizer, tokenizer_kind = get_tokenizer()
    shrink = {"n_layer": args.n_layer} if args.n_layer else {}
    out = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
           "dtype": str(dtype).split(".")[-1], "tokenizer": tokenizer_kind, "n_layer_override": args.n_layer,
           "torch": torch.__version__}

    # 1-3. gpt2-xl
    log("building random gpt2-xl")
    mt, seconds = timed(device, lambda: build("gpt2-xl", tokenizer, device, dtype, **shrink))
    xl = out["gpt2-xl"] = {"params": sum(p.numel() for p in mt.model.parameters()),
                           "build_s": round(seconds, 2)}
    prompt, subject = prompt_of(tokenizer, args.tokens)
    log(f"trace {prompt!r} ({len(tokenizer(prompt)['input_ids'])} tokens)")
    xl["trace"] = trace_check(mt, prompt, subject, KINDS, args.samples, args.ref_budget_s)
    xl["trace"]["prompt"] = prompt

    hparams = ROMEHyperParams.for_model("gpt2-xl")
    if args.n_layer:  # not the last layer: δ there could not reach the target positions
        hparams = replace(hparams, layer=min(hparams.layer, max(0, mt.n_layer - 2)))
    log(f"key statistics at layer {hparams.layer} over {args.cov_texts} x {args.cov_length} random tokens")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, len(tokenizer), (args.cov_texts, args.cov_length), generator=gen)
    texts = [tokenizer.decode(row) for row in ids.tolist()]
    (cov, count), seconds = timed(device, lambda: compute_mom2(
        mt, hparams.layer, texts, batch_size=32, max_length=args.cov_length, progress=False))
    xl["covariance"] = {"layer": hparams.layer, "tokens": count, "seconds": round(seconds, 2),
                        "tokens_per_s": round(count / seconds), "width": cov.shape[0]}
    log(f"  {count} tokens in {seconds:.1f}s")
    log("ROME edit")
    xl["edit"] = edit_check(mt, hparams, cov)
    log(f"  {xl['edit']}")
    del mt, cov
    if device.type == "cuda":
        torch.cuda.empty_cache()

    # 4. GPT-J
    if not args.skip_gptj:
        log("building random GPT-J")
        mt, seconds = timed(device, lambda: build("EleutherAI/gpt-j-6B", tokenizer, device, dtype, **shrink))
        gptj = out["gpt-j"] = {"params": sum(p.numel() for p in mt.model.parameters()),
                               "build_s": round(seconds, 2)}
        noise = default_noise(mt, [subject])
        result, seconds = timed(device, lambda: trace(mt, prompt, subject, "state",
                                                      samples=args.samples, noise=noise))
        gptj["trace_state_s"] = round(seconds, 3)
        gptj["trace_shape"] = list(result.scores.shape)
        log(f"  state trace {seconds:.2f}s")
        hparams = replace(ROMEHyperParams.for_model("EleutherAI/gpt-j-6B"), mom2_adjustment=False)
        if args.n_layer:
            hparams = replace(hparams, layer=min(hparams.layer, max(0, mt.n_layer - 2)))
        gptj["edit"] = edit_check(mt, hparams, None)
        log(f"  {gptj['edit']}")
        if device.type == "cuda":
            out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    out["total_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
