"""Hub models as a user with internet gets them: downloaded into the Hugging Face cache once, then
loaded from it with or without HF_HUB_OFFLINE -- a cache hit never waits for the network.

The cache is laid out by hand (tests/hub_fixture.py), so no network is needed. Each load runs in a
fresh interpreter because huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when it is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rome_lib.models import hub_reachable

ROOT = Path(__file__).parents[1]
LOAD = """
import json, socket, time
from rome_lib.models import ModelNotAvailableError, load_model
mt = load_model("gpt2", device="cpu")

def no_network(*args, **kwargs):  # as on a machine without internet, also where this test has one
    raise OSError("network unreachable")

socket.create_connection = no_network
started = time.perf_counter()
try:
    load_model("gpt2-medium", device="cpu")  # not in the cache
    miss = "loaded"
except ModelNotAvailableError as error:
    miss = str(error)
print(json.dumps({"n_layer": mt.n_layer, "weights_id": mt.weights_id, "vocab": len(mt.tokenizer),
                  "ids": mt.tokenizer(" Paris is the capital of France")["input_ids"],
                  "miss": miss, "miss_seconds": time.perf_counter() - started}))
"""


def hub_env(home: Path, cache: Path, offline: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env.update(HF_HOME=str(home), ROME_CACHE=str(cache), PYTHONPATH=str(ROOT), TOKENIZERS_PARALLELISM="false")
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


@pytest.mark.parametrize("value, reachable", [("1", False), ("true", False), ("ON", False)])
def test_hf_hub_offline_means_unreachable_without_asking_the_network(monkeypatch, value, reachable):
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert hub_reachable(host="192.0.2.1", timeout=30) is reachable  # would time out if it asked


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE=1", "HF_HUB_OFFLINE unset"])
def test_gpt2_loads_by_its_id_from_the_cache(gpt2_hub_home, tmp_path, offline):
    done = subprocess.run([sys.executable, "-c", LOAD], env=hub_env(gpt2_hub_home, tmp_path, offline),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["n_layer"] == 6 and out["vocab"] == 50257
    assert out["ids"] == [6342, 318, 262, 3139, 286, 4881]  # GPT-2's own BPE
    assert out["weights_id"] != "unknown"  # the snapshot's files are fingerprinted (caches key on it)
    # A model missing from the cache is one clear error, at once (the hub is unreachable here).
    assert "not in the local cache" in out["miss"] and out["miss_seconds"] < 20
