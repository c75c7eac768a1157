"""Scaling study: ES / PS / NS / S after 1, 10, 100 and 1,000 edits on the toy -- MEMIT in one batch
versus ROME and FT+L applied one after another -- and whether the edits break the model (held-out
NLL, generation entropy GE; rome_lib.mass_editing).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/memit_scaling.py --sizes 1 10 100 1000 \\
        --rome-max 100 --out benchmarks/results/memit

MEMIT: one batch per size (the first N records), scored and undone. ROME / FT+L: one sequential run
up to the largest size (``--rome-max`` / ``--ft-max`` caps it: ROME costs about a second per edit
on this CPU), scored after each size on every record edited so far. The first N records of the
toy set repeat subjects (1,352 records, 299 subjects): same-subject facts share MEMIT's key, so the
JSON also counts distinct subjects per size. Writes scaling.json and scaling.png.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from rome_lib.mass_editing import evaluate_batched, evaluate_sequential
from rome_lib.models import load_model

METRICS = ("S", "ES", "PS", "NS")


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    mt = load_model("toy", device="cpu")
    records = json.loads(mt.data_file("counterfact.json").read_text())
    sizes = sorted(args.sizes)
    out: dict = {"model": "toy", "sizes": sizes, "break_nll": 0.5,
                 "distinct_subjects": {n: len({r["requested_rewrite"]["subject"] for r in records[:n]})
                                       for n in sizes},
                 "methods": {}}
    rows = []
    for n in sizes:
        began = time.perf_counter()
        r = evaluate_batched(mt, records, "memit", batch=n, n=n, progress=False)
        rows.append({"edits": n, **{k: r[k] for k in METRICS}, "heldout_nll": r["chunks"][0]["heldout_nll"],
                     "broken": r["broken_chunks"], "seconds": round(time.perf_counter() - began, 1)})
        print("memit", rows[-1], flush=True)
    out["methods"]["memit (one batch)"] = {"steps": rows, "heldout_nll_unedited": r["heldout_nll_unedited"]}
    for method, cap in (("rome", args.rome_max), ("ft-l", args.ft_max)):
        marks = [n for n in sizes if n <= cap]
        if not marks:
            continue
        began = time.perf_counter()
        r = evaluate_sequential(mt, records, method, n=marks[-1], checkpoints=marks,
                                generation=True, progress=False)
        steps = [{"edits": s["edits"], **{k: s[k] for k in METRICS}, "heldout_nll": s["heldout_nll"],
                  "GE": s.get("GE")} for s in r["steps"]]
        out["methods"][f"{method} (sequential)"] = {
            "steps": steps, "unedited": r["unedited"], "breaking_edits": r["breaking_edits"],
            "stopped_at": marks[-1], "seconds": round(time.perf_counter() - began, 1)}
        print(method, steps, "breaking:", len(r["breaking_edits"]), flush=True)
    return out


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(17, 3.4))
    for name, data in result["methods"].items():
        steps = data["steps"]
        x = [s["edits"] for s in steps]
        for ax, key in zip(axes, (*METRICS, "heldout_nll")):
            ax.plot(x, [s[key] for s in steps], marker="o", label=name)
    for ax, key in zip(axes, (*METRICS, "held-out NLL (nats/token)")):
        ax.set_xscale("log")
        ax.set_xlabel("edits")
        ax.set_title(key)
    axes[0].legend(fontsize=8)
    fig.suptitle("Toy model: many edits (MEMIT in one batch vs one after another)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--rome-max", type=int, default=1000)
    parser.add_argument("--ft-max", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/memit")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    result = run(args)
    result["command"] = ("python benchmarks/memit_scaling.py --sizes " + " ".join(map(str, args.sizes))
                         + f" --rome-max {args.rome_max} --ft-max {args.ft_max}")
    (folder / "scaling.json").write_text(json.dumps(result, indent=1))
    plot(result, folder / "scaling.png")
    print(f"wrote {folder / 'scaling.json'} and {folder / 'scaling.png'}")


if __name__ == "__main__":
    main()
