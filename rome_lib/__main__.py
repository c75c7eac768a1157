"""Command line: ``python -m rome_lib {trace,aie,bench} --model toy ...`` (``--json`` for scripts).

Bad input (unknown model, a subject not in the prompt, ...) exits with status 2 and one line on
stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

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


def cmd_bench(args) -> dict:
    from .bench import bench_trace

    mt = _model(args)
    fact = _first_fact(mt) if args.prompt is None else {"prompt": args.prompt, "subject": args.subject}
    out = {"model": args.model, "device": str(mt.device),
           "trace": bench_trace(mt, fact["prompt"], fact["subject"], samples=args.samples)}
    if not args.json:
        t = out["trace"]
        print(f"full 3-kind trace, {t['tokens']} tokens x {t['layers']} layers: reference "
              f"{t['reference_s']:.2f}s, batched {t['batched_s']:.2f}s, speedup {t['speedup']}x, "
              f"max |diff| {t['max_abs_diff']:.1e}")
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

    p = sub.add_parser("bench", help="batched vs per-cell tracing (and editing) speed")
    common(p)
    p.add_argument("--prompt")
    p.add_argument("--subject")
    p.set_defaults(run=cmd_bench)
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
