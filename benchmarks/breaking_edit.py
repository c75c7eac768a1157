"""One edit, both ROME updates: does it break the model on its own? For each update (official,
consistent) apply the edit alone to the unedited model and measure the held-out NLL rise
(rome_lib.mass_editing's health texts, naming no subject of the records), the update's norm, how
far the bare prompt's key is from the averaged one (the official update divides by uᵀk_bare), what
v*'s optimisation reached, and the objects' probabilities on the rewrite prompt; then undo.

    python benchmarks/breaking_edit.py --model smollm2 --records benchmarks/results/smollm2/records.json \
        --index 13 --out benchmarks/results/smollm2/memit/breaking_edit.json

Record 13 of SmolLM2's set ("Italy's capital," -> Budapest) is the edit that the sequential ROME run
of the scaling study flagged as breaking (``scaling_rome.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from rome_lib.evaluation import object_probs
from rome_lib.hparams import ROMEHyperParams
from rome_lib.mass_editing import health_texts, model_health
from rome_lib.models import load_model
from rome_lib.rome import apply_rome


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--records", required=True)
    parser.add_argument("--index", type=int, required=True, help="which record to edit (0-based)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    mt = load_model(args.model, device="cpu")
    records = json.loads(Path(args.records).read_text())
    request = records[args.index]["requested_rewrite"]
    texts, _ = health_texts(records, records)
    prompt = request["prompt"].format(request["subject"])
    new, true = (" " + request[k]["str"].strip() for k in ("target_new", "target_true"))  # after a space
    out = {"model": args.model, "record": args.index, "request": request,
           "heldout_nll_unedited": model_health(mt, texts)["heldout_nll"],
           "p_new_unedited": object_probs(mt, [prompt], [new])[0].item(), "updates": {}}
    hp = ROMEHyperParams.for_model(mt.name, mt.n_layer)
    for update in ("official", "consistent"):
        with apply_rome(mt, request, dataclasses.replace(hp, update=update)) as edit:
            k_mean, k_bare = edit.info["k_mean"].double(), edit.info["k_bare"].double()
            out["updates"][update] = {
                "heldout_nll_rise": model_health(mt, texts)["heldout_nll"] - out["heldout_nll_unedited"],
                "update_norm": float(edit.info["update_norm"]),
                "cos_k_mean_k_bare": float(k_mean @ k_bare / (k_mean.norm() * k_bare.norm())),
                "k_mean_norm": float(k_mean.norm()), "k_bare_norm": float(k_bare.norm()),
                "v_star_p_target": edit.info["history"][-1]["p_target"],
                "p_new": object_probs(mt, [prompt], [new])[0].item(),
                "p_true": object_probs(mt, [prompt], [true])[0].item()}
        print(update, {k: round(v, 4) for k, v in out["updates"][update].items()}, flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
