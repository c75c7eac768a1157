"""Command line: ``python -m rome_lib {trace,aie,edit,evaluate,bench,sweep,models} --model toy ...``.

``--json`` prints one JSON object for scripts.

Bad input (unknown model, a subject not in the prompt, ...) exits with status 2 and one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import transformers

from .models import ModelNotAvailableError, load_model
from .real_models import add_models_parser
from .tracing import KINDS, average_indirect_effects, known_facts, trace_all, trace_json


def _model(args):
    return load_model(args.model, tokenizer=args.tokenizer, device=args.device)


def _first_fact(mt) -> dict:
    facts = known_facts(mt)
    if not facts:
        raise ValueError(f"{mt.name!r} has no known-facts set: give --prompt and --subject.")
    return facts[0]


def cmd_trace(args) -> dict:
    mt = _model(args)
    if (args.prompt is None) != (args.subject is None):
        raise ValueError("Give both --prompt and --subject, or neither (to trace the first known fact).")
    fact = {"prompt": args.prompt, "subject": args.subject} if args.prompt else _first_fact(mt)
    kinds = KINDS if args.kind == "all" else (args.kind,)
    results = trace_all(mt, fact["prompt"], fact["subject"], kinds, samples=args.samples,
                        noise=args.noise, window=args.window)
    if args.plot:
        from .plotting import plot_traces, use_file_backend

        use_file_backend()
        plot_traces(results, args.plot)
    out = trace_json(results)
    if not args.json:
        print(f"{out['prompt']!r} -> {out['answer']!r}; subject tokens {out['subject_range']}")
        for kind, r in results.items():
            t, l = divmod(int(r.scores.argmax()), r.scores.shape[1])
            print(f"  {kind:5s} clean {r.high:.3f} corrupted {r.low:.3f} "
                  f"best restore {r.scores.max():.3f} at token {t} {r.tokens[t]!r}, layer {l}")
    return out


def cmd_aie(args) -> dict:
    mt = _model(args)
    facts = known_facts(mt)[: args.n]
    if not facts:
        raise ValueError(f"{mt.name!r} has no known-facts set to average over.")
    result = average_indirect_effects(mt, facts, samples=args.samples, noise=args.noise,
                                      window=args.window, sever=args.sever)
    if args.plot:
        from .plotting import plot_aie, use_file_backend

        use_file_backend()
        plot_aie(result, args.plot)
    out = result.to_json()
    if not args.json:
        print(f"AIE over {result.n} facts: clean {result.high:.3f}, corrupted {result.low:.3f}, "
              f"ATE {result.ate:.3f}")
        for kind, values in result.kinds.items():
            print(f"  {kind}:")
            for name, row in zip(out["buckets"], values.tolist()):
                peak = max(range(len(row)), key=row.__getitem__)
                print(f"    {name:17s} max {row[peak]:+.4f} at layer {peak}")
    return out


def _records(mt, dataset: str, n: int | None) -> list[dict]:
    """CounterFact-style records: the model's own set for ``toy``, else the official files."""
    if dataset == "toy":
        path = mt.data_file("counterfact.json")
        if path is None:
            raise ValueError(f"{mt.name!r} has no CounterFact-style set beside its weights.")
        records = json.loads(path.read_text())
    else:
        from . import data

        records = data.load_counterfact() if dataset == "counterfact" else data.load_zsre()
    return records[:n] if n is not None else records


def _request(args, mt) -> tuple[dict, str | None]:
    """The edit request from the arguments (or the first record); and the true object if known."""
    given = [args.prompt, args.subject, args.target]
    if any(x is not None for x in given) and not all(x is not None for x in given):
        raise ValueError("Give --prompt, --subject and --target together, or none of them "
                         "(to edit the first record of the model's CounterFact-style set).")
    if args.prompt is not None:
        return {"prompt": args.prompt, "subject": args.subject,
                "target_new": {"str": args.target}}, None
    rewrite = _records(mt, "toy", 1)[0]["requested_rewrite"]
    return rewrite, rewrite["target_true"]["str"]


def _predict(mt, prompt: str, new: str, true: str) -> dict:
    from .evaluation import object_probs

    ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"].to(mt.device)
    with torch.no_grad():
        argmax = int(mt.model(ids, logits_to_keep=1).logits[0, -1].argmax())
    p_new, p_true = object_probs(mt, [prompt, prompt], [" " + new.strip(), " " + true.strip()]).tolist()
    return {"p_new": p_new, "p_true": p_true, "argmax": mt.tokenizer.decode([argmax])}


def cmd_edit(args) -> dict:
    from .evaluation import generate
    from .rome import apply_rome, normalize_request

    mt = _model(args)
    request, true = _request(args, mt)
    request = normalize_request(request)
    prompt = request["prompt"].format(request["subject"])
    new = request["target_new"]["str"]
    if true is None:  # the model's own answer stands in for the true object
        ids = mt.tokenizer(prompt, return_tensors="pt")["input_ids"].to(mt.device)
        with torch.no_grad():
            true = mt.tokenizer.decode([int(mt.model(ids, logits_to_keep=1).logits[0, -1].argmax())])
    gen_prompts = [prompt, f"{request['subject']} is"]
    out = {"request": request, "pre": _predict(mt, prompt, new, true)}
    if args.generate:
        out["generations_pre"] = generate(mt, gen_prompts, 40, seed=0)
    started = time.perf_counter()
    edit = apply_rome(mt, request)
    out["edit_seconds"] = round(time.perf_counter() - started, 3)
    out["layer"] = edit.layer
    out["post"] = _predict(mt, prompt, new, true)
    if args.generate:
        out["generations_post"] = generate(mt, gen_prompts, 40, seed=0)
    edit.undo()
    if not args.json:
        pre, post = out["pre"], out["post"]
        print(f"{prompt!r}: {true.strip()!r} -> {new!r} (ROME at layer {edit.layer}, "
              f"{out['edit_seconds']:.1f}s)")
        print(f"  before: P(new) {pre['p_new']:.3f}  P(true) {pre['p_true']:.3f}  argmax {pre['argmax']!r}")
        print(f"  after:  P(new) {post['p_new']:.3f}  P(true) {post['p_true']:.3f}  argmax {post['argmax']!r}")
        for a, b in zip(out.get("generations_pre", []), out.get("generations_post", [])):
            print(f"  before: {a!r}\n  after:  {b!r}")
    return out


def cmd_evaluate(args) -> dict:
    mt = _model(args)
    records = _records(mt, args.dataset, args.n)
    if args.dataset == "zsre":
        from .zsre import evaluate_zsre, zsre_cases

        edit_fn = None if args.method == "none" else _edit_fn(args.method)
        summary = evaluate_zsre(mt, zsre_cases(records, mt.tokenizer), edit_fn)["summary"]
        out = {"method": args.method, "dataset": "zsre",
               **{k: (100 * v if k != "n" else v) for k, v in summary.items()}}
    else:
        from .evaluation import evaluate

        out = {"dataset": args.dataset,
               **evaluate(mt, records, args.method, generation=not args.no_generation)}
    if not args.json:
        print(", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()))
    return out


def _edit_fn(method: str):
    from .baselines import apply_ft
    from .rome import apply_rome

    if method == "rome":
        return apply_rome
    return lambda mt, request: apply_ft(mt, request, constrained=(method == "ft-l"))


def cmd_bench(args) -> dict:
    from .bench import bench_edit, bench_trace

    mt = _model(args)
    fact = _first_fact(mt) if args.prompt is None else {"prompt": args.prompt, "subject": args.subject}
    out = {"model": args.model, "device": str(mt.device),
           "trace": bench_trace(mt, fact["prompt"], fact["subject"], samples=args.samples)}
    if mt.data_file("counterfact.json"):
        out.update(bench_edit(mt, _records(mt, "toy", 1)[0]["requested_rewrite"]))
    if not args.json:
        t = out["trace"]
        print(f"full 3-kind trace, {t['tokens']} tokens x {t['layers']} layers: reference "
              f"{t['reference_s']:.2f}s, batched {t['batched_s']:.2f}s, speedup {t['speedup']}x, "
              f"max |diff| {t['max_abs_diff']:.1e}; no exact shortcut saves more than "
              f"{t['exact_skip_bound']}x of the arithmetic")
        if "edit_s" in out:
            print(f"one ROME edit (C cached): {out['edit_s']:.2f}s at layer {out['layer']}")
    return out


def cmd_sweep(args) -> dict:
    from dataclasses import replace

    from .hparams import ROMEHyperParams
    from .sweep import parse_layers, sweep_layers

    mt = _model(args)
    if args.records:
        records = json.loads(open(args.records, encoding="utf-8").read())[: args.n]
    else:
        records = _records(mt, "toy", args.n)
    hparams = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    if args.mom2_corpus or args.mom2_n_samples:  # a smaller corpus for C: a sweep on a CPU
        hparams = replace(hparams, mom2_corpus=args.mom2_corpus or hparams.mom2_corpus,
                          mom2_n_samples=args.mom2_n_samples or hparams.mom2_n_samples)
    out = sweep_layers(mt, records, parse_layers(args.layers, mt.n_layer), hparams=hparams,
                       progress=not args.json)
    if not args.json:
        print(f"ROME at each layer, {out['n']} records:")
        for row in out["results"]:
            print("  layer {layer:2d}: S {S:5.1f}  ES {ES:5.1f}  PS {PS:5.1f}  NS {NS:5.1f}".format(**row))
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m rome_lib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--model", default="toy", help="toy, a hub id or a local folder (default toy)")
        p.add_argument("--tokenizer", default=None, help="borrow another tokenizer (e.g. toy)")
        p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.add_argument("--samples", type=int, default=10, help="noise draws per cell (default 10)")
        p.add_argument("--noise", type=float, default=None, help="noise std (default 3 x subject std)")

    p = sub.add_parser("trace", help="causal trace of one fact")
    common(p)
    p.add_argument("--prompt")
    p.add_argument("--subject")
    p.add_argument("--kind", choices=[*KINDS, "all"], default="all")
    p.add_argument("--window", type=int, default=None, help="layers restored for mlp/attn")
    p.add_argument("--plot", metavar="PNG", help="save the heatmaps")
    p.set_defaults(run=cmd_trace)

    p = sub.add_parser("aie", help="average indirect effects over the model's known facts")
    common(p)
    p.add_argument("--n", type=int, default=100, help="number of known facts (default 100)")
    p.add_argument("--window", type=int, default=None)
    p.add_argument("--sever", choices=["mlp", "attn"], default=None,
                   help="freeze this module at the restored token (paper Fig. 3)")
    p.add_argument("--plot", metavar="PNG")
    p.set_defaults(run=cmd_aie)

    p = sub.add_parser("edit", help="rewrite one fact with ROME, show before/after, undo")
    common(p)
    p.add_argument("--prompt", help='relation prompt with {} for the subject, e.g. "{} plays the sport of"')
    p.add_argument("--subject")
    p.add_argument("--target", help="the new object")
    p.add_argument("--generate", action="store_true", help="also generate text before and after")
    p.set_defaults(run=cmd_edit)

    p = sub.add_parser("evaluate", help="CounterFact / zsRE metrics of an editing method")
    common(p)
    p.add_argument("--method", choices=["none", "rome", "ft", "ft-l"], default="rome")
    p.add_argument("--dataset", choices=["toy", "counterfact", "zsre"], default="toy",
                   help="toy: the model's own set; counterfact/zsre: the official files")
    p.add_argument("--n", type=int, default=None, help="first N records (default all)")
    p.add_argument("--no-generation", action="store_true", help="skip GE/RS (faster)")
    p.set_defaults(run=cmd_evaluate)

    p = sub.add_parser("bench", help="batched vs per-cell tracing (and editing) speed")
    common(p)
    p.add_argument("--prompt")
    p.add_argument("--subject")
    p.set_defaults(run=cmd_bench)
    p = sub.add_parser("sweep", help="where to edit? ROME at each layer, ES/PS/NS/S per layer")
    common(p)
    p.add_argument("--layers", required=True, help="A-B (inclusive), A-B:step or a,b,c")
    p.add_argument("--n", type=int, default=50, help="first N records (default 50)")
    p.add_argument("--records", default=None,
                   help="a JSON file of CounterFact-style records (default: the model's own set)")
    p.add_argument("--mom2-corpus", default=None, help="corpus for C (default: the preset's)")
    p.add_argument("--mom2-n-samples", type=int, default=None,
                   help="texts of that corpus for C (default: the preset's)")
    p.set_defaults(run=cmd_sweep)
    add_models_parser(sub)  # models fetch smollm2 / models list
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    transformers.logging.set_verbosity_error()  # keep stderr for our one-line errors
    transformers.logging.disable_progress_bar()
    started = time.perf_counter()
    try:
        out = args.run(args)
    except (ValueError, KeyError, IndexError, ModelNotAvailableError, FileNotFoundError) as error:
        message = error.args[0] if error.args else str(error)
        print(f"error: {message}", file=sys.stderr)
        return 2
    if args.json:
        out.setdefault("seconds", round(time.perf_counter() - started, 3))
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
