"""Where to edit? Draw a layer sweep (``python -m rome_lib sweep ... --json``) beside the causal-tracing
effect at the last subject token for the same layers, and measure their rank correlation.

    python benchmarks/sweep_figure.py SWEEP.json AIE.json OUT_PREFIX

Writes OUT_PREFIX.png and OUT_PREFIX.json: per layer S/ES/PS/NS and the AIE of the MLP and of the
hidden state at the last subject token, and Spearman's rank correlation of each effect with S and
with ES across the swept layers (Hase et al. 2023 ask exactly this: does localization predict where
editing works?).
"""

import json
import sys

from rome_lib.plotting import use_file_backend
from rome_lib.sweep import SCORES, spearman, tracing_effect

sweep_path, aie_path, prefix = sys.argv[1:4]
sweep, aie = json.load(open(sweep_path)), json.load(open(aie_path))
results = sorted(sweep["results"], key=lambda row: row["layer"])  # a sweep may run in any order
layers = [row["layer"] for row in results]
effects = {kind: [tracing_effect(aie, kind)[l] for l in layers] for kind in ("mlp", "state")}
rho, undefined = {}, []
for kind in effects:
    for score in ("S", "ES"):
        try:
            rho[f"{kind}_vs_{score}"] = round(spearman(effects[kind], [r[score] for r in results]), 3)
        except ValueError:  # a constant curve (e.g. ES tied on the few layers of a cut sweep)
            undefined.append(f"{kind}_vs_{score}")
summary = {
    "model": sweep["model"], "records": sweep["n"], "aie_facts": aie["n"], "layers": layers,
    "mom2_corpus": sweep.get("mom2_corpus"), "mom2_n_samples": sweep.get("mom2_n_samples"),
    "scores": {k: [row[k] for row in results] for k in SCORES},
    "aie_last_subject": effects, "spearman": rho, "spearman_undefined": undefined,
}
json.dump(summary, open(prefix + ".json", "w"), indent=1)

use_file_backend()
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file backend)

fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.4), sharex=True)
for k in SCORES:
    left.plot(layers, summary["scores"][k], marker="o", label=k)
left.set(xlabel="edited layer", ylabel="score (%)",
         title=f"ROME at each layer, {sweep['model']}, {sweep['n']} records")
left.legend(fontsize=8)
for kind, color in (("mlp", "tab:green"), ("state", "tab:purple")):
    right.plot(layers, effects[kind], marker="o", color=color, label=f"{kind} (AIE)")
right.set(xlabel="layer", ylabel="AIE at the last subject token",
          title=f"causal tracing, {aie['n']} facts")
right.legend(fontsize=8, title=f"Spearman vs S: MLP {rho.get('mlp_vs_S', float('nan')):+.2f}, "
             f"state {rho.get('state_vs_S', float('nan')):+.2f}", title_fontsize=8)
fig.tight_layout()
fig.savefig(prefix + ".png", dpi=100)
print(json.dumps(summary["spearman"]))
