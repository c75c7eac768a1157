"""Scaling study: ES / PS / NS / S after 1, 10, 100 and 1,000 edits on the toy (or another model
and records file) -- MEMIT in one batch versus ROME (official and consistent updates) and FT+L applied
one after another -- and whether the edits break the model (held-out NLL after every edit,
generation entropy GE; rome_lib.mass_editing). The held-out texts are one set for the whole study:
true statements that name none of the subjects edited at the largest size.

    # each method is its own process and file (run them in parallel, or one by one):
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 nice -n 10 python benchmarks/memit_scaling.py --method rome
    ... --method rome-consistent / --method ft-l / --method memit
    # then merge the per-method files into scaling.json and draw scaling.png:
    PYTHONPATH=$PWD python benchmarks/memit_scaling.py --plot

MEMIT: one batch per size (the first N records), scored and undone. ROME / FT+L: one sequential run
up to the largest size (``--max`` caps it), scored after each size on every record edited so far;
its file is rewritten after every checkpoint, so a run stopped early keeps the sizes it reached. The
first N records of the toy set repeat subjects (1,352 records, 299 subjects): same-subject facts
share MEMIT's key, so the JSON also counts distinct subjects per size.

SmolLM2 (its 60 records from benchmarks/smollm2_reproduce.py; C for MEMIT's layers 1-3 from the
Wikipedia leads, cached after the first run):

    python benchmarks/memit_scaling.py --model smollm2 --records benchmarks/results/smollm2/records.json \
        --sizes 1 10 60 --method memit --out benchmarks/results/smollm2/memit   # then rome, ..., --plot
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from rome_lib.hparams import ROMEHyperParams
from rome_lib.mass_editing import BREAK_NLL, evaluate_batched, evaluate_sequential, health_texts
from rome_lib.models import load_model

METRICS = ("S", "ES", "PS", "NS")
METHODS = {"memit": "MEMIT (one batch)", "rome": "ROME, official update (sequential)",
           "rome-consistent": "ROME, consistent update (sequential)", "ft-l": "FT+L (sequential)"}


def cpu_seconds() -> float:
    """CPU seconds of this process so far (user + system)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def header(args, sizes: list[int], records: list[dict]) -> dict:
    return {"model": args.model, "method": METHODS[args.method], "sizes": sizes, "break_nll": BREAK_NLL,
            "distinct_subjects": {n: len({r["requested_rewrite"]["subject"] for r in records[:n]})
                                  for n in sizes},
            "threads": args.threads, "load_average_at_start": os.getloadavg(),
            "command": " ".join(["python benchmarks/memit_scaling.py", *sys.argv[1:]])}


def run(args, path: Path) -> None:
    torch.set_num_threads(args.threads)
    mt = load_model(args.model, device="cpu")
    source = Path(args.records) if args.records else mt.data_file("counterfact.json")
    records = json.loads(source.read_text())
    sizes = sorted(n for n in args.sizes if n <= args.max)
    # one held-out set for every size: statements naming none of the largest size's subjects
    health = health_texts(records, records[: sizes[-1]])
    out = header(args, sizes, records)
    out["heldout_texts"] = health[0]
    began, cpu0 = time.perf_counter(), cpu_seconds()

    def save(steps: list[dict], **extra) -> None:
        out.update(steps=steps, wall_seconds=round(time.perf_counter() - began, 1),
                   cpu_seconds=round(cpu_seconds() - cpu0, 1), load_average_now=os.getloadavg(), **extra)
        path.write_text(json.dumps(out, indent=1))
        print(args.method, steps[-1] if steps else "", flush=True)

    if args.method == "memit":
        steps = []
        for n in sizes:
            t0 = time.perf_counter()
            r = evaluate_batched(mt, records, "memit", batch=n, n=n, generation=True, progress=False,
                                 health=health)
            steps.append({"edits": n, **{k: r[k] for k in METRICS}, "heldout_nll": r["chunks"][0]["heldout_nll"],
                          "GE": r["chunks"][0]["GE"], "broken": r["broken_chunks"],
                          "seconds": round(time.perf_counter() - t0, 1)})
            save(steps, heldout_nll_unedited=r["heldout_nll_unedited"])
        return
    method, hparams = args.method, None
    if method == "rome-consistent":
        method, hparams = "rome", dataclasses.replace(ROMEHyperParams.for_model(args.model, mt.n_layer),
                                                  update="consistent")
    steps: list[dict] = []

    def on_step(step: dict, breaking: list[dict]) -> None:
        steps.append({"edits": step["edits"], **{k: step[k] for k in METRICS},
                      "heldout_nll": step["heldout_nll"], "GE": step.get("GE")})
        save(steps, breaking_edits=breaking, stopped_at=step["edits"])

    r = evaluate_sequential(mt, records, method, n=sizes[-1], checkpoints=sizes, hparams=hparams,
                            generation=True, progress=args.progress, on_step=on_step, health=health)
    save(steps, breaking_edits=r["breaking_edits"], stopped_at=sizes[-1], unedited=r["unedited"])


def merge(folder: Path) -> dict:
    """scaling.json: every per-method file found in ``folder``."""
    methods = {}
    for key, name in METHODS.items():
        path = folder / f"scaling_{key}.json"
        if path.exists():
            methods[name] = json.loads(path.read_text())
    if not methods:
        raise SystemExit(f"No scaling_<method>.json in {folder}: run a --method first.")
    models = {m.get("model", "toy") for m in methods.values()}
    if len(models) > 1:
        raise SystemExit(f"{folder} mixes models {sorted(models)}: one folder per model (--out).")
    return {"model": models.pop(), "methods": methods}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 6, figsize=(20, 3.6))
    for name, data in result["methods"].items():
        steps = data["steps"]
        x = [s["edits"] for s in steps]
        label = name
        if "breaking_edits" in data:
            label += f"; breaking edits: {len(data['breaking_edits'])}"
        elif all("broken" in s for s in steps):
            label += f"; breaking batches: {sum(bool(s['broken']) for s in steps)} of {len(steps)}"
        for ax, key in zip(axes, (*METRICS, "heldout_nll", "GE")):
            ax.plot(x, [s.get(key) for s in steps], marker="o", label=label)
    for ax, key in zip(axes, (*METRICS, "held-out NLL (nats/token)", "generation entropy GE")):
        ax.set_xscale("log")
        ax.set_xlabel("edits")
        ax.set_title(key)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=2, fontsize=8)
    model = {"toy": "Toy model", "smollm2": "SmolLM2-135M"}.get(result["model"], result["model"])
    fig.suptitle(f"{model}: many edits (MEMIT in one batch vs ROME and FT+L one after another)")
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(METHODS))
    parser.add_argument("--model", default="toy", help="toy, smollm2 or a folder (default toy)")
    parser.add_argument("--records", default=None,
                        help="a JSON list of CounterFact-style records (default: the model's own set)")
    parser.add_argument("--plot", action="store_true", help="merge the per-method files and draw")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 10, 100, 1000])
    parser.add_argument("--max", type=int, default=1000, help="largest size to run")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/memit")
    args = parser.parse_args()
    folder = Path(args.out)
    folder.mkdir(parents=True, exist_ok=True)
    if args.method:
        run(args, folder / f"scaling_{args.method}.json")
    if args.plot:
        result = merge(folder)
        (folder / "scaling.json").write_text(json.dumps(result, indent=1))
        plot(result, folder / "scaling.png")
        print(f"wrote {folder / 'scaling.json'} and {folder / 'scaling.png'}")
    if not (args.method or args.plot):
        parser.error("give --method, --plot or both.")


if __name__ == "__main__":
    main()
