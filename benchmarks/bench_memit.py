"""How long one MEMIT batch takes, stage by stage (C cached beforehand, not timed).

    PYTHONPATH=$PWD python benchmarks/bench_memit.py --n 1000 [--threads 2] [--model toy]

Prints wall-clock and CPU seconds for: the context templates, the first keys and states, the
target optimisation z (the bulk), and each layer's keys + update; then the total. The issue's
target: 1,000 toy facts in ≤ 2 minutes on the 2-core CPU. Records are the model's own
CounterFact-style set (the toy has 1,352).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from rome_lib.hparams import MEMITHyperParams
from rome_lib.memit import apply_memit, compute_targets, keys_and_states
from rome_lib.models import load_model
from rome_lib.rome import get_cov, templates_for


class Stopwatch:
    def __init__(self):
        self.rows: list[tuple[str, float, float]] = []

    def __call__(self, name: str, fn, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn(*args, **kwargs)
        self.rows.append((name, time.perf_counter() - wall, time.process_time() - cpu))
        print(f"  {name:28s} {self.rows[-1][1]:7.1f} s wall {self.rows[-1][2]:7.1f} s CPU", flush=True)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", metavar="PATH", help="also write the timings here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mt = load_model(args.model, device="cpu")
    hp = MEMITHyperParams.for_model(mt.name, mt.n_layer)
    records = json.loads(mt.data_file("counterfact.json").read_text())[: args.n]
    requests = [r["requested_rewrite"] for r in records]
    covs = {layer: get_cov(mt, hp, progress=True, layer=layer) for layer in hp.layers}  # not timed
    print(f"MEMIT, {len(requests)} facts into layers {hp.layers} of {args.model}, "
          f"{args.threads} thread(s):")
    load_before = os.getloadavg()
    watch = Stopwatch()
    templates = watch("context templates", templates_for, mt, hp)
    _, states = watch("keys and states (first)", keys_and_states, mt, requests, hp.layers[0],
                      hp.layers[-1], templates)
    z, _ = watch("targets z", compute_targets, mt, requests, hp, templates, states)
    edit = watch("layers: keys + update", apply_memit, mt, requests, hp, covs=covs,
                 templates=templates, targets=z)
    edit.undo()
    total_wall, total_cpu = sum(r[1] for r in watch.rows), sum(r[2] for r in watch.rows)
    # apply_memit reads the first layer's keys again (it is given z, not the states)
    print(f"  {'total':28s} {total_wall:7.1f} s wall {total_cpu:7.1f} s CPU "
          f"(target ≤ 120 s wall for 1,000 toy facts)")
    load = {"before": load_before, "after": os.getloadavg()}
    print(f"  load average (1, 5, 15 min) before {load['before']}, after {load['after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"model": args.model, "n": len(requests), "threads": args.threads,
                       "stages": [{"stage": s, "wall_s": round(w, 2), "cpu_s": round(c, 2)}
                                  for s, w, c in watch.rows],
                       "total_wall_s": round(total_wall, 2), "total_cpu_s": round(total_cpu, 2),
                       "load_average": load, "z_steps": hp.v_num_grad_steps}, f,
                      indent=1)


if __name__ == "__main__":
    main()
