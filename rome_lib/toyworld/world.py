"""A small, seeded "fact world": made-up subjects, CounterFact-like relations, and the text about them.

The embedded model (``rome_lib/toyworld/train.py``) is trained on :meth:`World.training_texts` and
nothing else, so everything it knows is listed here. The world is built to look like the paper's
setting at a tiny scale:

* **Subjects** are made-up names of 2-4 words (persons "Varno Kettmar", landmarks "Dask Olvin Tower",
  companies "Torvik Brask Group"). Name words are shared between subjects, so a subject's identity is
  only certain at its *last* token -- as for "Space Needle" vs "Space Shuttle".
* **Relations** use Wikidata ids like CounterFact (P27 citizenship, P103 native language, ...). Objects
  are common single words predicted with a leading space (" France"); many subjects share an object.
* **Templates**: several per relation for training, and one held out of training (paraphrase tests).
* **Text styles** beyond "prompt + object": appositions ("Varno Kettmar, the pilot from France,"),
  parentheticals ("Varno Kettmar (born in Lyon)"), descriptions right after the subject ("the Dask
  Tower in Paris"), several facts of one subject in one sentence, and filler. In these the token right
  after the subject already needs the subject's attributes, which is meant to push the model to recall
  them *at the last subject token* -- the "subject enrichment" that causal tracing finds in GPT-2.
  How far it worked is measured in lesson 03: the trained model's MLP effect at the last subject
  token is there but peaks in layers 0-1, and most of its recall still happens at the last token.

Usage::

    from rome_lib.toyworld.world import build_world
    world = build_world()                       # seed 0: the world the shipped model was trained on
    world.prompt("Varno Kettmar", "P27")        # 'Varno Kettmar is a citizen of'
    world.object_of("Varno Kettmar", "P27")     # 'France'  (no leading space; add one to predict)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping

# --------------------------------------------------------------------------------------------------
# Object vocabularies (real, common words; each must become one BPE token with a leading space)
# --------------------------------------------------------------------------------------------------

CITY_COUNTRY = {
    "Paris": "France", "Lyon": "France", "Berlin": "Germany", "Munich": "Germany",
    "Rome": "Italy", "Milan": "Italy", "Madrid": "Spain", "Seville": "Spain",
    "Tokyo": "Japan", "Osaka": "Japan", "Beijing": "China", "Shanghai": "China",
    "Toronto": "Canada", "Montreal": "Canada", "Mumbai": "India", "Delhi": "India",
    "Moscow": "Russia", "Stockholm": "Sweden", "Cairo": "Egypt", "Warsaw": "Poland",
    "Athens": "Greece", "Lisbon": "Portugal", "Oslo": "Norway", "Vienna": "Austria",
}
COUNTRIES = tuple(dict.fromkeys(CITY_COUNTRY.values()))
CITIES = tuple(CITY_COUNTRY)
LANGUAGES = ("French", "German", "Italian", "Spanish", "Japanese", "Chinese", "English", "Russian",
             "Swedish", "Arabic", "Polish", "Greek", "Portuguese", "Dutch", "Korean")
PROFESSIONS = ("painter", "singer", "writer", "lawyer", "doctor", "pilot", "teacher", "chef",
               "journalist", "nurse", "banker", "farmer", "dancer", "poet")
INSTRUMENTS = ("piano", "guitar", "violin", "drums", "cello", "flute", "trumpet", "harp", "organ")
SPORTS = ("football", "tennis", "golf", "cricket", "hockey", "baseball", "basketball", "rugby")
EMPLOYERS = ("Google", "Microsoft", "Apple", "Sony", "IBM", "BBC", "Nokia", "Toyota", "Intel",
             "Amazon", "Samsung", "Siemens")
INDUSTRIES = ("software", "banking", "mining", "shipping", "fashion", "insurance", "aviation",
              "energy", "retail", "tourism")
STYLES = ("Gothic", "Baroque", "Renaissance", "Victorian", "Classical", "Modernist", "Colonial",
          "Byzantine")
LANDMARK_TYPES = ("Tower", "Bridge", "Museum", "Palace", "Cathedral", "Stadium", "Castle", "Library")
COMPANY_TYPES = ("Group", "Systems", "Holdings", "Industries", "Labs", "Partners")


# --------------------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """A relation: ``templates`` are used in training, ``heldout_templates`` never are.

    Templates contain ``{}`` for the subject and end right before the object (CounterFact style).
    """

    relation_id: str
    name: str
    subject_kind: str  # "person", "landmark" or "company" (P17 serves landmarks and companies)
    templates: tuple[str, ...]
    heldout_templates: tuple[str, ...]
    objects: tuple[str, ...]  # without the leading space

    @property
    def all_templates(self) -> tuple[str, ...]:
        return self.templates + self.heldout_templates


@dataclass(frozen=True)
class Fact:
    subject: str
    relation_id: str
    object: str  # without the leading space ("France")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes and text mixture of the world (the defaults build the shipped world)."""

    n_persons: int = 160
    n_landmarks: int = 80
    n_companies: int = 60
    template_repeats: int = 2      # copies of every (fact, training template) sentence
    n_enrich_per_subject: int = 14  # apposition / parenthetical / multi-fact sentences per subject
    n_filler: int = 3000           # sentences without subject facts
    n_mentions_per_subject: int = 2  # sentences that mention a subject without stating a fact
    n_records_per_subject: int = 6  # "index card" lines: the subject directly followed by its objects
    n_bios_per_subject: int = 6     # short paragraphs: the name once, then pronouns ("He plays the piano.")
    name_style: str = "shared"      # "shared": one word pool, order matters; "split": pools per position
    name_pool: int = 48             # name words in the shared pool (small: no single word identifies)
    twin_prob: float = 0.5          # chance that a name's reversed twin is also a subject ("shared")


RELATION_SPECS = [
    # id, name, subject kind, training templates, held-out template, objects
    ("P27", "country of citizenship", "person",
     ["{} is a citizen of", "{} holds citizenship of", "{} has a passport from",
      "The citizenship of {} is that of", "{} is a national of"],
     ["{} has citizenship of"], COUNTRIES),
    ("P103", "native language", "person",
     ["The native language of {} is", "{} is a native speaker of", "The mother tongue of {} is",
      "{} grew up speaking", "{}'s first language is"],
     ["{}'s native language is"], LANGUAGES),
    ("P106", "occupation", "person",
     ["{} works as a", "{} is a professional", "By profession, {} is a", "{} earns a living as a",
      "The occupation of {} is"],
     ["{}'s profession is that of a"], PROFESSIONS),
    ("P1303", "instrument", "person",
     ["{} plays the", "{} is known for playing the", "The instrument of {} is the",
      "{} performs music on the", "{} practises the"],
     ["{} plays music on the"], INSTRUMENTS),
    ("P108", "employer", "person",
     ["{} works for", "{} is employed by", "{} is an employee of", "The employer of {} is",
      "{} has a job at", "{} currently works for"],
     ["{} is currently employed by"], EMPLOYERS),
    ("P641", "sport", "person",
     ["{} professionally competes in", "{} competes in", "The sport of {} is",
      "{} is a keen player of", "{}'s favourite sport is", "{} plays the sport called"],
     ["{} plays the sport of"], SPORTS),
    ("P19", "place of birth", "person",
     ["{} was born in", "{} is originally from the city of", "The birthplace of {} is",
      "{} was born in the city of", "The hometown of {} is", "The place of birth of {} is"],
     ["{}'s place of birth is"], CITIES),
    ("P131", "located in the city of", "landmark",
     ["{} is located in the city of", "{} stands in the city of", "{} can be found in the city of",
      "The city of {} is", "{} is a landmark of the city of"],
     ["{} is in the city of"], CITIES),
    ("P17", "country", "landmark|company",
     ["{} is located in the country of", "{} can be found in the country of",
      "The country of {} is", "{} belongs to the country of", "{} is based in the country of"],
     ["{} is in the country of"], COUNTRIES),
    ("P149", "architectural style", "landmark",
     ["The architectural style of {} is", "{} was built in the style called", "{} is a building in the style called",
      "The style of {} is called", "{} was designed in the style called"],
     ["{} is an example of the style called"], STYLES),
    ("P159", "headquarters location", "company",
     ["The headquarters of {} is in", "{} is headquartered in", "{} has its head office in",
      "The head office of {} is in", "{} is run from its offices in"],
     ["{} has its headquarters in"], CITIES),
    ("P452", "industry", "company",
     ["{} operates in the industry of", "{} is a company in the field of", "The industry of {} is",
      "{} makes its money in the field of", "{} is active in the industry of",
      "{} is a business in the field of"],
     ["{} does business in the field of"], INDUSTRIES),
]

KIND_RELATIONS = {
    "person": ("P27", "P103", "P106", "P1303", "P108", "P641", "P19"),
    "landmark": ("P131", "P17", "P149"),
    "company": ("P159", "P17", "P452"),
}

GENERATION_TEMPLATES = {
    "person": ["{} is known for", "{} is", "People say that {}", "The life of {}", "I met {}"],
    "landmark": ["{} is", "Visitors to {}", "The history of {}", "{} is known for", "I visited {}"],
    "company": ["{} is", "The history of {}", "{} is known for", "People say that {}", "I read about {}"],
}

# short unrelated sentences (official paraphrase prompts often start with one)
PREFIXES = [
    "The weather was mild that day.", "It was late in the evening.", "Nobody expected the news.",
    "The report came out last week.", "Many people came to see it.", "That is a long story.",
    "The train was late again.", "This is worth knowing.", "The answer is simple.",
    "Everyone agreed on that point.",
]

_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "h", "j", "br", "dr",
           "kr", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "a", "e", "o", "ai", "ou"]
_CODAS = ["", "", "", "", "n", "r", "l", "s", "k", "m", "nd", "st"]


def _make_words(rng: random.Random, n: int, taken: set[str], syllables=(2, 2)) -> list[str]:
    words: list[str] = []
    while len(words) < n:
        k = rng.randint(*syllables)
        word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(k))
        word = word.capitalize()
        if 4 <= len(word) <= 9 and word.lower() not in taken:
            taken.add(word.lower())
            words.append(word)
    return words


@dataclass(frozen=True)
class World:
    """The fact world. Build it with :func:`build_world` (seeded, so every build is identical)."""

    seed: int
    config: WorldConfig
    subjects: tuple[str, ...]
    subject_kinds: Mapping[str, str]       # subject -> "person" | "landmark" | "company"
    relations: Mapping[str, Relation]      # relation_id -> Relation
    facts: tuple[Fact, ...]
    prefixes: tuple[str, ...] = field(default=tuple(PREFIXES))

    # ---- look-ups -------------------------------------------------------------------------------
    @cached_property
    def _table(self) -> dict[str, dict[str, str]]:
        table: dict[str, dict[str, str]] = {s: {} for s in self.subjects}
        for f in self.facts:
            table[f.subject][f.relation_id] = f.object
        return table

    def relation(self, relation_id: str) -> Relation:
        return self.relations[relation_id]

    def facts_of(self, subject: str) -> dict[str, str]:
        """relation_id -> object for one subject."""
        return dict(self._table[subject])

    def object_of(self, subject: str, relation_id: str) -> str:
        return self._table[subject][relation_id]

    def subjects_with(self, relation_id: str, obj: str) -> list[str]:
        """Subjects whose object for ``relation_id`` is ``obj`` (in world order)."""
        return [f.subject for f in self.facts if f.relation_id == relation_id and f.object == obj]

    def facts_for(self, relation_id: str) -> list[Fact]:
        return [f for f in self.facts if f.relation_id == relation_id]

    # ---- prompts --------------------------------------------------------------------------------
    def templates(self, relation_id: str, heldout: bool = False) -> tuple[str, ...]:
        rel = self.relations[relation_id]
        return rel.heldout_templates if heldout else rel.templates

    def prompt(self, subject: str, relation_id: str, template_index: int = 0, heldout: bool = False) -> str:
        """``template.format(subject)``: e.g. 'Varno Kettmar is a citizen of' (object follows)."""
        return self.templates(relation_id, heldout)[template_index].format(subject)

    def prompts(self, subject: str, relation_id: str, heldout: bool = False) -> list[str]:
        return [t.format(subject) for t in self.templates(relation_id, heldout)]

    def generation_prompts(self, subject: str) -> list[str]:
        return [t.format(subject) for t in GENERATION_TEMPLATES[self.subject_kinds[subject]]]

    def statement(self, subject: str, relation_id: str, obj: str | None = None, template_index: int = 0) -> str:
        """A full sentence: prompt + ' ' + object + '.'; ``obj`` defaults to the true object."""
        obj = self.object_of(subject, relation_id) if obj is None else obj
        return f"{self.prompt(subject, relation_id, template_index)} {obj}."

    def describe(self, subject: str, facts: Mapping[str, str] | None = None) -> str:
        """A short paragraph stating all facts of ``subject`` (``facts`` overrides some of them).

        Useful as reference text (e.g. the text about an edited subject with its new object).
        """
        table = self.facts_of(subject)
        table.update(facts or {})
        return " ".join(f"{self.relations[r].templates[0].format(subject)} {o}." for r, o in table.items())

    def reference_texts(self, relation_id: str, obj: str, n: int = 5) -> list[str]:
        """Descriptions of (up to ``n``) subjects whose object for ``relation_id`` is ``obj``."""
        return [self.describe(s) for s in self.subjects_with(relation_id, obj)[:n]]

    # ---- the training corpus ----------------------------------------------------------------------
    def training_texts(self) -> list[str]:
        """The exact list of sentences the embedded model is trained on (deterministic).

        ROME's covariance statistics for the toy model are computed from this corpus too.
        """
        return list(self._corpus)

    @cached_property
    def _corpus(self) -> tuple[str, ...]:
        return tuple(_generate_corpus(self))

    def heldout_phrases(self) -> list[str]:
        """The relation phrases of held-out templates (never in the training corpus)."""
        return [t.replace("{}", "").strip() for r in self.relations.values() for t in r.heldout_templates]

    def to_json(self) -> dict:
        """Everything needed to rebuild prompts and reference texts without this module."""
        return {
            "seed": self.seed,
            "subjects": [{"name": s, "kind": self.subject_kinds[s], "facts": self.facts_of(s)} for s in self.subjects],
            "relations": {
                r.relation_id: {"name": r.name, "subject_kind": r.subject_kind, "templates": list(r.templates),
                                "heldout_templates": list(r.heldout_templates), "objects": list(r.objects)}
                for r in self.relations.values()
            },
            "generation_templates": GENERATION_TEMPLATES,
            "prefixes": list(self.prefixes),
        }


# --------------------------------------------------------------------------------------------------
# Building the world
# --------------------------------------------------------------------------------------------------


def build_world(seed: int = 0, config: WorldConfig | None = None) -> World:
    """The world for ``seed`` (the shipped model uses seed 0 and the default :class:`WorldConfig`)."""
    config = config or WorldConfig()
    rng = random.Random(seed)
    taken = {w.lower() for w in CITIES + COUNTRIES + LANGUAGES + EMPLOYERS + STYLES}
    if config.name_style == "shared":
        # One pool of name words used in every position, and many "twins" with the same words in
        # another order ("Varno Kettmar" and "Kettmar Varno" are different people): a bag of the
        # subject's tokens does not identify it; only the last token, knowing what came before, does.
        pool = _make_words(rng, config.name_pool, taken)
        given = middle = surnames = roots = roots2 = pool
    else:
        given = _make_words(rng, 26, taken)
        middle = _make_words(rng, 14, taken)
        surnames = _make_words(rng, 34, taken)
        roots = _make_words(rng, 40, taken)
        roots2 = _make_words(rng, 16, taken)

    subjects: list[str] = []
    kinds: dict[str, str] = {}

    def add(words: list[str], kind: str, tail: list[str], limit: int) -> int:
        added = 0
        variants = [words]
        if config.name_style == "shared" and rng.random() < config.twin_prob:
            variants.append(words[::-1])
        for v in variants:
            name = " ".join(v + tail)
            if len(set(v)) == len(v) and name not in kinds and added + count[kind] < limit:
                subjects.append(name)
                kinds[name] = kind
                added += 1
        return added

    count = {"person": 0, "landmark": 0, "company": 0}
    while count["person"] < config.n_persons:  # "Varno Kettmar", "Varno Tel Kettmar"
        words = [rng.choice(given)] + ([rng.choice(middle)] if rng.random() < 0.4 else []) + [rng.choice(surnames)]
        count["person"] += add(words, "person", [], config.n_persons)
    while count["landmark"] < config.n_landmarks:  # "Dask Tower", "Dask Olvin Tower"
        words = [rng.choice(roots)] + ([rng.choice(roots2)] if rng.random() < 0.5 else [])
        count["landmark"] += add(words, "landmark", [rng.choice(LANDMARK_TYPES)], config.n_landmarks)
    while count["company"] < config.n_companies:  # "Torvik Group", "Torvik Brask Labs"
        words = [rng.choice(roots)] + ([rng.choice(roots2)] if rng.random() < 0.5 else [])
        count["company"] += add(words, "company", [rng.choice(COMPANY_TYPES)], config.n_companies)
    order = list(subjects)
    rng.shuffle(order)

    relations = {spec[0]: Relation(spec[0], spec[1], spec[2], tuple(spec[3]), tuple(spec[4]), tuple(spec[5]))
                 for spec in RELATION_SPECS}
    facts: list[Fact] = []
    for s in order:
        kind = kinds[s]
        if kind == "person":
            for r in KIND_RELATIONS["person"]:
                facts.append(Fact(s, r, rng.choice(relations[r].objects)))
        elif kind == "landmark":
            city = rng.choice(CITIES)
            facts += [Fact(s, "P131", city), Fact(s, "P17", CITY_COUNTRY[city]),
                      Fact(s, "P149", rng.choice(STYLES))]
        else:
            city = rng.choice(CITIES)
            facts += [Fact(s, "P159", city), Fact(s, "P17", CITY_COUNTRY[city]),
                      Fact(s, "P452", rng.choice(INDUSTRIES))]
    return World(seed=seed, config=config, subjects=tuple(order), subject_kinds=kinds,
                 relations=relations, facts=tuple(facts))


# --------------------------------------------------------------------------------------------------
# Text generation
# --------------------------------------------------------------------------------------------------

# Short phrases stating one fact *after* the subject has been named (used in multi-fact sentences).
_CLAUSES = {
    "P27": ["is a citizen of {}", "holds citizenship of {}", "has a passport from {}"],
    "P103": ["grew up speaking {}", "is a native speaker of {}"],
    "P106": ["works as a {}", "earns a living as a {}"],
    "P1303": ["plays the {}", "performs music on the {}"],
    "P108": ["works for {}", "is employed by {}", "has a job at {}"],
    "P641": ["competes in {}", "is a keen player of {}"],
    "P19": ["was born in {}", "is originally from {}"],
    "P131": ["stands in {}", "can be found in {}"],
    "P17": ["is in {}", "belongs to {}"],
    "P149": ["was built in the {} style", "is a {} building"],
    "P159": ["is headquartered in {}", "has its head office in {}"],
    "P452": ["operates in {}", "makes its money in {}"],
}


def _enrichment_sentences(rng: random.Random, s: str, kind: str, f: dict[str, str]) -> list[str]:
    """Sentences in which the token right after the subject already depends on its attributes."""
    if kind == "person":
        options = [
            f"{s}, the {f['P106']} from {f['P27']}, {rng.choice(_CLAUSES['P1303']).format(f['P1303'])}.",
            f"{s} ({f['P19']}, {f['P27']}) {rng.choice(_CLAUSES['P106']).format(f['P106'])}.",
            f"{s} (born in {f['P19']}) {rng.choice(_CLAUSES['P108']).format(f['P108'])}.",
            f"{s}, a {f['P106']} at {f['P108']}, grew up speaking {f['P103']}.",
            f"{s}, a {f['P1303']} player from {f['P19']}, {rng.choice(_CLAUSES['P641']).format(f['P641'])}.",
            f"{s} the {f['P106']} {rng.choice(_CLAUSES['P27']).format(f['P27'])}.",
            f"{s} of {f['P108']} is a native speaker of {f['P103']}.",
            f"{s}, {f['P103']} speaker and {f['P641']} fan, works for {f['P108']}.",
            f"{s} ({f['P106']}, {f['P1303']}) was born in {f['P19']}.",
            f"{s}, the {f['P641']} player, {rng.choice(_CLAUSES['P27']).format(f['P27'])}.",
        ]
    elif kind == "landmark":
        options = [
            f"{s} in {f['P131']} is a {f['P149']} building.",
            f"{s} ({f['P131']}, {f['P17']}) was built in the {f['P149']} style.",
            f"{s}, the {f['P149']} landmark of {f['P131']}, attracts many visitors.",
            f"{s} of {f['P131']} is one of the best known sights of {f['P17']}.",
            f"{s}, a {f['P149']} building in {f['P17']}, stands in {f['P131']}.",
            f"The {s} in {f['P131']} was restored last year.",
        ]
    else:
        options = [
            f"{s} of {f['P159']} operates in {f['P452']}.",
            f"{s} ({f['P159']}, {f['P17']}) is a {f['P452']} company.",
            f"{s}, the {f['P452']} company from {f['P159']}, hired new staff.",
            f"{s}, a {f['P452']} firm based in {f['P17']}, is headquartered in {f['P159']}.",
            f"{s} in {f['P159']} makes its money in {f['P452']}.",
        ]
    return options


def _filler_sentence(rng: random.Random) -> str:
    city = rng.choice(CITIES)
    country = CITY_COUNTRY[city]
    patterns = [
        f"{city} is a large city in {country}.",
        f"Many people in {country} speak {rng.choice(LANGUAGES)}.",
        f"{rng.choice(SPORTS).capitalize()} is popular in {rng.choice(COUNTRIES)}.",
        f"The {rng.choice(PROFESSIONS)} played the {rng.choice(INSTRUMENTS)} in {city}.",
        f"{rng.choice(EMPLOYERS)} opened a new office in {city}.",
        f"The {rng.choice(INDUSTRIES)} industry is growing in {country}.",
        f"A {rng.choice(STYLES)} church stands in the old town of {city}.",
        f"The {rng.choice(PROFESSIONS)} and the {rng.choice(PROFESSIONS)} met in {city}.",
        f"She learned {rng.choice(LANGUAGES)} and moved to {city}.",
        f"He bought a {rng.choice(INSTRUMENTS)} in {city} last year.",
        f"The {rng.choice(['old', 'new', 'small', 'quiet', 'busy'])} {rng.choice(['market', 'station', 'park', 'school', 'street'])} "
        f"{rng.choice(['was', 'is', 'seemed'])} {rng.choice(['empty', 'full', 'closed', 'open', 'noisy'])} "
        f"{rng.choice(['in the morning', 'at night', 'on Sunday', 'after the rain', 'all week'])}.",
        rng.choice(PREFIXES),
    ]
    return rng.choice(patterns)


_POSSESSIVE = {"He": "His", "She": "Her", "It": "Its"}


def _bio_paragraph(rng: random.Random, world: World, s: str, pronoun: str, table: Mapping[str, str]) -> str:
    """A few facts about one subject, named once and then referred to by a pronoun.

    Facts stated far from the name, through "He"/"She"/"It", can only be recalled by reading the
    subject's representation at its name -- which favours storing attributes at the last subject
    token instead of looking them up anew at the end of each sentence.
    """
    rels = list(table)
    rng.shuffle(rels)
    sentences = []
    for n, r in enumerate(rels[: rng.randint(3, min(5, len(rels)))]):
        templates = [t for t in world.relations[r].templates if t.startswith("{}")]
        t = rng.choice(templates)
        if n == 0:
            subject = s
        elif t.startswith("{}'s"):
            subject, t = _POSSESSIVE[pronoun], t[4:]
            t = "{}" + t
        else:
            subject = pronoun
        sentences.append(f"{t.format(subject)} {table[r]}.")
    return " ".join(sentences)


def _record_sentence(rng: random.Random, s: str, table: Mapping[str, str]) -> str:
    """An index-card line, "Varno Kettmar pilot, France, piano." (2-3 facts in random order).

    The token right after the subject is one of its objects, so predicting it needs the subject's
    attributes at the last subject token.
    """
    rels = list(table)
    rng.shuffle(rels)
    return f"{s} " + ", ".join(table[r] for r in rels[: rng.randint(2, 3)]) + "."


def _mention_sentence(rng: random.Random, s: str) -> str:
    return rng.choice([
        f"I read an article about {s} yesterday.", f"{s} was mentioned in the news.",
        f"Everyone was talking about {s}.", f"We saw a picture of {s}.", f"{s} is well known.",
    ])


def _generate_corpus(world: World) -> list[str]:
    rng = random.Random(world.seed * 1000 + 1)
    cfg = world.config
    texts: list[str] = []
    for f in world.facts:
        rel = world.relations[f.relation_id]
        for t in rel.templates:
            for _ in range(cfg.template_repeats):
                texts.append(f"{t.format(f.subject)} {f.object}.")
    for s in world.subjects:
        kind = world.subject_kinds[s]
        table = world.facts_of(s)
        for _ in range(cfg.n_enrich_per_subject):
            texts.append(rng.choice(_enrichment_sentences(rng, s, kind, table)))
        pronoun = "It" if kind != "person" else rng.choice(["He", "She"])
        for _ in range(cfg.n_bios_per_subject):
            texts.append(_bio_paragraph(rng, world, s, pronoun, table))
        for _ in range(cfg.n_records_per_subject):
            texts.append(_record_sentence(rng, s, table))
        for _ in range(cfg.n_mentions_per_subject):
            texts.append(_mention_sentence(rng, s))
    texts += [_filler_sentence(rng) for _ in range(cfg.n_filler)]
    rng.shuffle(texts)
    phrases = world.heldout_phrases()
    for text in texts:
        for p in phrases:
            if p in text:
                raise AssertionError(f"held-out phrase {p!r} leaked into the corpus: {text!r}")
    return texts
