"""Train the embedded fact-world model: ``python -m rome_lib.toyworld.train [--out DIR] [--quick]``.

Reproducible end to end: the world (``world.py``, seed 0), the byte-level BPE tokenizer trained on
the world's text, and a small ``GPT2LMHeadModel`` trained with a fixed seed and a fixed data order on
1 CPU thread (on a shared 2-core machine, 2 threads can be several times slower). It writes to ``--out`` (default ``rome_lib/toyworld/assets``):

* the model (``config.json``, ``model.safetensors``) and tokenizer (``save_pretrained``);
* ``known_facts.json`` -- facts the model gets right, in the format of the paper's known_1000.json;
* ``counterfact.json`` -- CounterFact-style edit records built from known facts;
* ``world.json`` -- every subject with all its facts, the relations and their templates;
* ``train_report.json`` -- the config, parameter count, training time and accuracies.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rome_lib.paths import TOY_DIR as ASSETS
from rome_lib.toyworld.world import World, WorldConfig, build_world

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of the shipped model (a test checks it against assets/config.json)."""

    seed: int = 0              # seeds the world, the data order and the weights
    vocab_size: int = 2048     # model vocabulary; the BPE learns at most this many tokens (rows past
                               # len(tokenizer) are padding that no text ever uses)
    n_layer: int = 8
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 128
    block_size: int = 128      # tokens per training sequence (packed whole sentences)
    batch_size: int = 8
    epochs: int = 10
    lr: float = 2e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 200
    weight_decay: float = 0.05
    dropout: float = 0.0
    threads: int = 1           # 1, not 2: on a shared 2-core machine 2 threads can be many times slower
    newline_prob: float = 0.5  # separator between packed sentences: "\n" (else a space)


QUICK = dict(epochs=3)


# --------------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------------


def train_tokenizer(texts: list[str], vocab_size: int):
    """A GPT-2-style byte-level BPE trained on ``texts``, as a transformers ``GPT2TokenizerFast``."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer(add_prefix_space=False)
    # both forms of every sentence, so words are learned with and without a leading space
    bpe.train_from_iterator([t for text in texts for t in (text, " " + text)], vocab_size=vocab_size,
                            min_frequency=2, special_tokens=[EOS], show_progress=False)
    state = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    tok = GPT2TokenizerFast(vocab=state["vocab"], merges=merges, unk_token=EOS, bos_token=EOS,
                            eos_token=EOS, pad_token=EOS, add_prefix_space=False)
    tok.padding_side = "right"
    tok.model_max_length = 10**6
    return tok


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


def encode_sentences(tok, texts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Each sentence tokenized as a text start ("Varno ...") and after a space (" Varno ...")."""
    start = tok(texts, add_special_tokens=False)["input_ids"]
    spaced = tok([" " + t for t in texts], add_special_tokens=False)["input_ids"]
    return start, spaced


def pack_epoch(start, spaced, newline_id: int, eos_id: int, cfg: TrainConfig, epoch: int) -> torch.Tensor:
    """Whole sentences packed into [n, block_size] sequences (shuffled with a per-epoch seed).

    A sequence starts with a sentence at position 0 (like a prompt); later sentences follow a
    newline or a space. The rest of a sequence is padded with EOS, masked out of the loss (-100).
    """
    rng = random.Random(cfg.seed * 7919 + epoch)
    order = list(range(len(start)))
    rng.shuffle(order)
    blocks: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if not current:
            piece = start[i]
        elif rng.random() < cfg.newline_prob:
            piece = [newline_id] + start[i]
        else:
            piece = spaced[i]
        if current and len(current) + len(piece) > cfg.block_size:
            blocks.append(current)
            current = list(start[i])
        else:
            current = current + piece
    if current:
        blocks.append(current)
    out = torch.full((len(blocks), cfg.block_size), -100, dtype=torch.long)
    for j, b in enumerate(blocks):
        b = b[: cfg.block_size]
        out[j, : len(b)] = torch.tensor(b)
    return out


# --------------------------------------------------------------------------------------------------
# Evaluation helpers
# --------------------------------------------------------------------------------------------------


@torch.no_grad()
def next_token_logits(model, tok, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
    """Logits of the token after each prompt, [len(prompts), vocab]."""
    out = []
    for i in range(0, len(prompts), batch_size):
        enc = tok(prompts[i: i + batch_size], return_tensors="pt", padding=True)
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
        last = enc["attention_mask"].sum(1) - 1
        out.append(logits[torch.arange(len(last)), last].float())
    return torch.cat(out)


def first_token(tok, obj: str) -> int:
    return tok(" " + obj, add_special_tokens=False)["input_ids"][0]


def accuracy(model, tok, world: World, heldout: bool) -> tuple[float, dict[tuple[str, str, int], bool]]:
    """Top-1 accuracy of the object's first token over all (fact, template) prompts."""
    keys, prompts, targets = [], [], []
    for f in world.facts:
        for k, t in enumerate(world.templates(f.relation_id, heldout)):
            keys.append((f.subject, f.relation_id, k))
            prompts.append(t.format(f.subject))
            targets.append(first_token(tok, f.object))
    pred = next_token_logits(model, tok, prompts).argmax(-1)
    ok = (pred == torch.tensor(targets)).tolist()
    return sum(ok) / len(ok), dict(zip(keys, ok))


@torch.no_grad()
def greedy(model, tok, prompt: str, n: int = 5) -> str:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False,
                         pad_token_id=tok.eos_token_id)
    return tok.decode(out[0, ids.shape[1]:])


# --------------------------------------------------------------------------------------------------
# Data files (official field names)
# --------------------------------------------------------------------------------------------------


def known_facts(model, tok, world: World, correct: dict[tuple[str, str, int], bool]) -> list[dict]:
    """One record per fact the model gets right, like known_1000.json.

    The template is chosen per fact (rotating through the relation's training templates, starting
    at a fact-dependent index) as the first one the model answers correctly.
    """
    records = []
    order = list(range(len(world.facts)))
    random.Random(world.seed + 99).shuffle(order)  # any prefix (e.g. the first 100) is a fair sample
    for n in order:
        f = world.facts[n]
        templates = world.templates(f.relation_id)
        for j in range(len(templates)):
            k = (n + j) % len(templates)
            if correct[(f.subject, f.relation_id, k)]:
                prompt = templates[k].format(f.subject)
                records.append({
                    "known_id": len(records), "subject": f.subject, "attribute": f.object,
                    "template": templates[k], "prediction": greedy(model, tok, prompt),
                    "prompt": prompt, "relation_id": f.relation_id,
                })
                break
    return records


def counterfact(world: World, known: list[dict], seed: int, n_neighbours: int = 10, n_attribute: int = 5,
                min_neighbours: int = 5, min_attribute: int = 2) -> list[dict]:
    """CounterFact-style records (official field names) for every known fact.

    target_new is another object of the same relation; neighbourhood prompts are other subjects
    whose true object is target_true (known ones first); attribute prompts are subjects whose
    object is target_new. String values have no leading space (code adds it). Facts whose true
    object has fewer than ``min_neighbours`` other subjects are left out.
    """
    rng = random.Random(seed + 12345)
    known_subjects = {(r["subject"], r["relation_id"]) for r in known}
    records = []
    for r in known:
        s, rid, true = r["subject"], r["relation_id"], r["attribute"]
        rel = world.relation(rid)
        kind = world.subject_kinds[s]
        # target_new: an object of the same relation that other subjects of the same kind have
        candidates = [o for o in rel.objects if o != true
                      and sum(world.subject_kinds[x] == kind for x in world.subjects_with(rid, o)) >= min_attribute]
        n_true = sum(x != s for x in world.subjects_with(rid, true))
        if not candidates or n_true < min_neighbours:
            continue  # too few subjects share the true object for a neighbourhood test
        new = rng.choice(candidates)

        def prompts_for(obj: str, n: int) -> list[str]:
            subs = [x for x in world.subjects_with(rid, obj) if x != s]
            subs.sort(key=lambda x: (x, rid) not in known_subjects)  # known first, stable
            head = [x for x in subs if (x, rid) in known_subjects]
            rng.shuffle(head)
            subs = (head + [x for x in subs if (x, rid) not in known_subjects])[:n]
            return [rng.choice(rel.templates).format(x) for x in subs]

        paraphrases = [t.format(s) for t in rel.heldout_templates]
        paraphrases += [f"{rng.choice(world.prefixes)} {t.format(s)}" for t in rel.heldout_templates]
        records.append({
            "case_id": len(records),
            "pararel_idx": r["known_id"],
            "requested_rewrite": {
                "prompt": r["template"], "relation_id": rid,
                "target_new": {"str": new, "id": f"toy:{new}"},
                "target_true": {"str": true, "id": f"toy:{true}"},
                "subject": s,
            },
            "paraphrase_prompts": paraphrases,
            "neighborhood_prompts": prompts_for(true, n_neighbours),
            "attribute_prompts": prompts_for(new, n_attribute),
            "generation_prompts": world.generation_prompts(s)[:3],
        })
    return records


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def write_data_files(model, tok, world: World, out: Path) -> tuple[float, float, list, list]:
    """Measure accuracy and write known_facts.json, counterfact.json and world.json to ``out``."""
    acc_train, correct = accuracy(model, tok, world, heldout=False)
    acc_heldout, _ = accuracy(model, tok, world, heldout=True)
    known = known_facts(model, tok, world, correct)
    cf = counterfact(world, known, world.seed)
    (out / "known_facts.json").write_text(json.dumps(known, indent=1) + "\n")
    (out / "counterfact.json").write_text(json.dumps(cf, indent=1) + "\n")
    (out / "world.json").write_text(json.dumps(world.to_json(), indent=1) + "\n")
    return acc_train, acc_heldout, known, cf


def build_model(cfg: TrainConfig, tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_positions, n_embd=cfg.n_embd, n_layer=cfg.n_layer,
        n_head=cfg.n_head, resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.dropout,
        bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True,
    )
    return GPT2LMHeadModel(config)


def train(cfg: TrainConfig, out: Path, world_config: WorldConfig | None = None, log=print, device: str = "cpu") -> dict:
    torch.set_num_threads(cfg.threads)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    out.mkdir(parents=True, exist_ok=True)

    world = build_world(cfg.seed, world_config)
    texts = world.training_texts()
    tok = train_tokenizer(texts, cfg.vocab_size)
    assert len(tok) <= cfg.vocab_size, f"the tokenizer has {len(tok)} tokens, more than vocab_size={cfg.vocab_size}"
    for rel in world.relations.values():
        for o in rel.objects:
            assert len(tok(" " + o, add_special_tokens=False)["input_ids"]) == 1, f"object {o!r} is not one token"
    lengths = [len(tok(s, add_special_tokens=False)["input_ids"]) for s in world.subjects]
    log(f"world: {len(world.subjects)} subjects, {len(world.facts)} facts, {len(texts)} sentences; "
        f"vocab {len(tok)}; subject tokens min/mean/max {min(lengths)}/{sum(lengths)/len(lengths):.2f}/{max(lengths)}")

    start, spaced = encode_sentences(tok, texts)
    newline_id = tok("\n", add_special_tokens=False)["input_ids"][0]
    model = build_model(cfg, tok).to(device)
    n_params = sum(p.numel() for p in model.parameters())
    epochs = [pack_epoch(start, spaced, newline_id, tok.eos_token_id, cfg, e) for e in range(cfg.epochs)]
    steps_per_epoch = [math.ceil(len(e) / cfg.batch_size) for e in epochs]
    total = sum(steps_per_epoch)
    n_tokens = sum(int((e != -100).sum()) for e in epochs)
    log(f"model: {n_params / 1e6:.2f} M parameters; {total} steps, {n_tokens / 1e6:.2f} M tokens")

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    t0 = time.time()
    step = 0
    bar = tqdm(total=total, desc="training", mininterval=2.0)
    for e, data in enumerate(epochs):
        for i in range(0, len(data), cfg.batch_size):
            labels = data[i: i + cfg.batch_size].to(device)
            ids = labels.clamp(min=0)
            ids[labels == -100] = tok.eos_token_id
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            loss = model(input_ids=ids, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            bar.update(1)
            if step % 20 == 0:
                bar.set_postfix(epoch=e, loss=f"{loss.item():.3f}")
    bar.close()
    train_time = time.time() - t0
    model.eval().cpu()

    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    acc_train, acc_heldout, known, cf = write_data_files(model, tok, world, out)
    report = {
        "train_config": asdict(cfg), "world_config": asdict(world.config), "parameters": n_params,
        "train_seconds": round(train_time, 1), "tokens": n_tokens, "steps": total,
        "final_loss": round(loss.item(), 4), "accuracy_train_templates": round(acc_train, 4),
        "accuracy_heldout_templates": round(acc_heldout, 4), "known_facts": len(known),
        "counterfact_records": len(cf), "subject_tokens": [min(lengths), max(lengths)],
    }
    (out / "train_report.json").write_text(json.dumps(report, indent=1))
    log(f"parameters: {n_params:,}")
    log(f"training time: {train_time / 60:.1f} min ({total} steps)")
    log(f"top-1 object accuracy, trained templates: {acc_train:.1%}  (target >= 95%)")
    log(f"top-1 object accuracy, held-out templates: {acc_heldout:.1%}  (target >= 80%)")
    log(f"known facts: {len(known)}; counterfact records: {len(cf)}; written to {out}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ASSETS, help="output folder (default: the shipped assets)")
    parser.add_argument("--quick", action="store_true", help="a short run for smoke tests (not the shipped model)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="override TrainConfig / WorldConfig fields (experiments only)")
    parser.add_argument("--data-only", action="store_true",
                        help="re-write the JSON data files from the model already in --out (no training)")
    parser.add_argument("--device", default="cpu", help="experiments only; the shipped model is trained on the CPU")
    args = parser.parse_args(argv)
    cfg = TrainConfig()
    wcfg = WorldConfig()
    if args.quick:
        cfg = replace(cfg, **QUICK)
    for item in args.set:
        key, value = item.split("=", 1)
        target = cfg if key in TrainConfig.__dataclass_fields__ else wcfg
        typ = type(getattr(target, key))
        if target is cfg:
            cfg = replace(cfg, **{key: typ(value)})
        else:
            wcfg = replace(wcfg, **{key: typ(value)})
    if args.data_only:
        from transformers import GPT2LMHeadModel, GPT2TokenizerFast

        torch.set_num_threads(cfg.threads)
        model = GPT2LMHeadModel.from_pretrained(args.out).eval()
        tok = GPT2TokenizerFast.from_pretrained(args.out)
        acc_train, acc_heldout, known, cf = write_data_files(model, tok, build_world(cfg.seed, wcfg), args.out)
        print(f"accuracy {acc_train:.1%} / held-out {acc_heldout:.1%}; {len(known)} known facts, {len(cf)} records")
        return
    train(cfg, args.out, wcfg, device=args.device)


if __name__ == "__main__":
    main()
