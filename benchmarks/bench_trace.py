"""Batched causal tracing vs the per-cell reference, measured in the same run.

    python benchmarks/bench_trace.py [--model toy] [--threads 1]

Prints one JSON line (see ``python -m rome_lib bench``): reference seconds, batched seconds, their
ratio, the largest score difference between the two, and the most any exact shortcut could save
(``exact_skip_bound``).
"""

import argparse
import json

import torch

from rome_lib.bench import bench_trace
from rome_lib.models import load_model
from rome_lib.tracing import known_facts

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy")
parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
parser.add_argument("--samples", type=int, default=10)
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
mt = load_model(args.model)
fact = known_facts(mt)[0]
result = bench_trace(mt, fact["prompt"], fact["subject"], samples=args.samples)
print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "trace": result}))
