"""MEMIT's λ (``mom2_update_weight``) on one batch: the targets Z are optimised once, then each λ
only re-solves the layers' least-squares updates (``apply_memit(targets=...)``), so a sweep costs one
z optimisation plus a few seconds per λ. Prints and writes S / ES / PS / NS and the held-out NLL
(rome_lib.mass_editing's health texts) for every λ.

    python benchmarks/memit_lambda.py --model smollm2 --records benchmarks/results/smollm2/records.json \
        --lambdas 1400 5000 15000 50000 --out benchmarks/results/smollm2/memit/lambda.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from rome_lib.evaluation import record_metrics, score_record, summarize
from rome_lib.hparams import MEMITHyperParams
from rome_lib.mass_editing import health_texts, model_health
from rome_lib.memit import apply_memit
from rome_lib.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--records", default=None, help="JSON records (default: the model's own set)")
    parser.add_argument("--n", type=int, default=None, help="first N records (default all)")
    parser.add_argument("--lambdas", type=float, nargs="+", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mt = load_model(args.model, device="cpu")
    source = Path(args.records) if args.records else mt.data_file("counterfact.json")
    records = json.loads(source.read_text())[: args.n]
    texts, _ = health_texts(records, records)  # statements naming no edited subject
    hp = MEMITHyperParams.for_model(mt.name, mt.n_layer)
    requests = [r["requested_rewrite"] for r in records]
    began = time.perf_counter()
    out = {"model": args.model, "n": len(records), "layers": list(hp.layers),
           "heldout_nll_unedited": model_health(mt, texts)["heldout_nll"], "runs": []}
    z = None
    for lam in args.lambdas:
        with apply_memit(mt, requests, dataclasses.replace(hp, mom2_update_weight=lam),
                         targets=z, progress=True) as edit:
            z = edit.info["z"]
            row = {"lambda": lam, **summarize([record_metrics(score_record(mt, r)) for r in records]),
                   "heldout_nll": model_health(mt, texts)["heldout_nll"]}
        out["runs"].append(row)
        out["seconds"] = round(time.perf_counter() - began, 1)
        print({k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
        Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
