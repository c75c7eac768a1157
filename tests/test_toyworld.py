"""The embedded fact-world model: the shipped files match the script, the data sets are honest."""

import dataclasses
import json

import pytest
import torch

from rome_lib.models import TOY_DIR, load_model
from rome_lib.toyworld.train import TrainConfig
from rome_lib.toyworld.world import build_world


@pytest.fixture(scope="module")
def toy():
    return load_model("toy", device="cpu")


@pytest.fixture(scope="module")
def world():
    return build_world(TrainConfig().seed)


def _json(name):
    return json.loads((TOY_DIR / name).read_text())


def test_training_script_config_matches_the_shipped_model():
    shipped = _json("config.json")
    config = TrainConfig()
    for field in ("n_layer", "n_embd", "n_head", "vocab_size", "n_positions"):
        assert shipped[field] == getattr(config, field), field
    report = _json("train_report.json")["train_config"]
    assert report == dataclasses.asdict(config), "retrain: python -m rome_lib.toyworld.train"


def test_shipped_world_is_the_one_the_script_builds(world):
    assert _json("world.json") == json.loads(json.dumps(world.to_json()))
    assert world.training_texts()[:50] == build_world(TrainConfig().seed).training_texts()[:50]


def test_known_facts_are_known(toy):
    facts = _json("known_facts.json")[:60]
    prompts = [f["prompt"] for f in facts]
    enc = toy.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = toy.model(**enc).logits
    last = enc["attention_mask"].sum(1) - 1
    predicted = logits[torch.arange(len(facts)), last].argmax(-1).tolist()
    first = [toy.tokenizer(" " + f["attribute"])["input_ids"][0] for f in facts]
    assert predicted == first
    assert all(f["prompt"] == f["template"].format(f["subject"]) for f in facts)


def test_heldout_templates_never_appear_in_training_text(world):
    corpus = "\n".join(world.training_texts())
    for relation in world.relations.values():
        for template in relation.heldout_templates:
            assert template not in relation.templates
            for fact in world.facts_for(relation.relation_id)[:20]:
                assert template.format(fact.subject) not in corpus, template


def test_counterfact_records_follow_the_official_format(world):
    records = _json("counterfact.json")
    assert len(records) >= 300
    for record in records[:200]:
        rw = record["requested_rewrite"]
        assert "{}" in rw["prompt"] and rw["subject"] in world.subjects
        new, true = rw["target_new"]["str"], rw["target_true"]["str"]
        assert new != true and not new.startswith(" ")
        assert world.object_of(rw["subject"], rw["relation_id"]) == true
        assert new in world.relation(rw["relation_id"]).objects
        assert len(record["paraphrase_prompts"]) >= 2 and len(record["neighborhood_prompts"]) >= 5
        assert all(rw["subject"] in p for p in record["paraphrase_prompts"])
        assert not any(rw["subject"] + " " in p or p.startswith(rw["subject"] + "'")
                       for p in record["neighborhood_prompts"])
        assert record["generation_prompts"]


def test_objects_are_single_tokens_with_a_leading_space(toy, world):
    objects = {o for r in world.relations.values() for o in r.objects}
    for obj in objects:
        assert len(toy.tokenizer(" " + obj)["input_ids"]) == 1, obj
