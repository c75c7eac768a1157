"""Fast exact causal tracing vs the per-cell reference, measured in the same run.

    python benchmarks/bench_trace.py [--model toy] [--threads 1] [--samples 10]
    python benchmarks/bench_trace.py --model smollm2 --threads 1          # ~8 CPU-minutes
    python benchmarks/bench_trace.py --model smollm2 --threads 1 --kinds state
    python benchmarks/bench_trace.py --model smollm2 --threads 2 --samples 3 --no-reference

Prints one JSON line (see ``python -m rome_lib bench``): wall and CPU seconds of the reference and of
``tracing.trace``, their ratios, the largest score difference between the two, and the most any
exact shortcut could save (``exact_skip_bound``). SmolLM2 traces "Audible.com is owned by" (it is
in the model's cache after ``python -m rome_lib models fetch smollm2``); the toy its first known fact.
"""

import argparse
import json

import torch

from rome_lib.bench import bench_trace
from rome_lib.models import load_model
from rome_lib.tracing import known_facts

SMOLLM2_FACT = {"prompt": "Audible.com is owned by", "subject": "Audible.com"}

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy")
parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
parser.add_argument("--samples", type=int, default=10)
parser.add_argument("--no-reference", action="store_true", help="time the fast trace alone")
parser.add_argument("--kinds", default="state,mlp,attn", help="comma-separated (default all three)")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
mt = load_model(args.model, device="cpu")
facts = known_facts(mt)
fact = facts[0] if facts else SMOLLM2_FACT
result = bench_trace(mt, fact["prompt"], fact["subject"], samples=args.samples,
                     reference=not args.no_reference, kinds=args.kinds.split(","))
print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "trace": result}))
