"""One ROME edit with C cached: wall and CPU seconds, and its v* and ΔW to compare across versions.

    python benchmarks/bench_edit.py --model smollm2 --threads 1 --save /tmp/before.pt
    python benchmarks/bench_edit.py --model smollm2 --threads 1 --compare /tmp/before.pt

SmolLM2 edits the first record of ``benchmarks/results/smollm2/records.json`` ("Audible.com is owned
by" -> Tokyo) at its preset layer 3 with C from the first 300 Wikipedia leads (``--mom2-n-samples``;
computed once, cached; not part of the timing); the toy edits its first CounterFact-style record. The context templates are
sampled once before the timing (cached per model), as a session's second edit finds them.
``--compare`` prints the largest relative change of v* and of ΔW against a ``--save``d run.
Prints one JSON line.
"""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch

from rome_lib.bench import _timed_cpu
from rome_lib.hparams import ROMEHyperParams
from rome_lib.models import load_model
from rome_lib.rome import apply_rome, get_cov, templates_for

RECORDS = Path(__file__).parent / "results" / "smollm2" / "records.json"

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy")
parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
parser.add_argument("--layer", type=int, default=None, help="default: the model's preset")
parser.add_argument("--mom2-n-samples", type=int, default=None,
                    help="texts for C (default: 300 for smollm2, the preset's for the toy)")
parser.add_argument("--save", type=Path, help="write v* and ΔW here")
parser.add_argument("--compare", type=Path, help="a --save'd file to compare v* and ΔW with")
args = parser.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
mt = load_model(args.model, device="cpu")
if args.model == "toy":
    records = json.loads(mt.data_file("counterfact.json").read_text())
else:
    records = json.loads(RECORDS.read_text())
request = records[0]["requested_rewrite"]
hparams = ROMEHyperParams.for_model(mt.name, mt.n_layer)
if args.layer is not None:
    hparams = replace(hparams, layer=args.layer)
n_texts = args.mom2_n_samples or (300 if args.model == "smollm2" else None)
if hparams.mom2_adjustment and n_texts:
    hparams = replace(hparams, mom2_n_samples=n_texts)
get_cov(mt, hparams, progress=False)
templates_for(mt, hparams)
weight = mt.model.get_submodule(mt.layout.mlp_out_at(hparams.layer)).weight
before = weight.detach().float().clone()
edit, wall, cpu = _timed_cpu(lambda: apply_rome(mt, request, hparams))
update = weight.detach().float() - before
v_star = edit.info["v_star"].float()
edit.undo()
out = {"model": args.model, "layer": hparams.layer, "mom2_n_samples": hparams.mom2_n_samples, "threads": torch.get_num_threads(),
       "request": request, "steps": len(edit.info["history"]), "edit_s": round(wall, 2),
       "edit_cpu_s": round(cpu, 2)}
if args.save:
    torch.save({"v_star": v_star, "update": update}, args.save)
if args.compare:
    ref = torch.load(args.compare)
    rel = lambda a, b: ((a - b).norm() / b.norm()).item()  # noqa: E731
    out["v_star_rel_diff"] = rel(v_star, ref["v_star"])
    out["update_rel_diff"] = rel(update, ref["update"])
print(json.dumps(out))
