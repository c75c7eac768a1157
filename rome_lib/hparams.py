"""Hyper-parameters of ROME and of the fine-tuning baselines, with per-model presets.

The ROME values are the official ones (github.com/kmeng01/rome, ``hparams/ROME/*.json``); FT and
FT+L follow ``baselines/ft`` (GPT-2 XL: 25 steps of Adam, lr 5e-4, ε = 5e-4 for FT+L).

    hp = ROMEHyperParams.for_model("gpt2-xl")      # layer 17, 20 steps, lr 0.5, ...
    hp = dataclasses.replace(hp, kl_factor=0.1)    # a variant
"""

from __future__ import annotations

from dataclasses import dataclass

# The two forms of ROME's update (ROMEHyperParams.update): the official code's, and R-ROME's.
UPDATES = ("official", "consistent")

# The embedded "toy" model (8 layers, d_model 128). Its causal tracing (lesson 03) shows no clear
# mid-layer MLP peak at the last subject token (the state effect there is largest among subject
# tokens in layers 0-4), so the layer and clamp were chosen by editing the first 100 CounterFact-style
# records (C from the toy corpus, no generation; ES/PS/NS/S). Chosen with the consistent update and
# prefixes of 5 and 10 tokens:
#   layer 1-5, clamp 4 (official, 20 records): S 0 / 69 / 83 / 81 / 72 -- v* hits the clamp: the toy
#   model's MLP outputs are small next to its residual stream, so 4·‖m₀‖ cannot reach the target;
#   layer 3, clamp 10: 99.0 / 93.0 / 96.7 / 96.2;  layer 4, clamp 10: 98.0 / 92.5 / 95.8 / 95.4.
# Layer 3, clamp 10 with the official prefixes (4 and 9 tokens), same 100 records: official update
# (the default) 100.0 / 93.5 / 95.7 / 96.3; consistent update 98.0 / 92.5 / 97.0 / 95.8.
TOY_LAYER = 3
TOY_CLAMP = 10.0

# SmolLM2-135M (30 layers): its causal tracing over 120 known facts (benchmarks/results/smollm2/)
# puts the largest MLP effect at the last subject token at layer 3 (AIE .066, window 6). ROME there
# on 60 edits, S / ES / PS / NS with C from the 10,033 Wikipedia lead sections ("wiki-leads", the
# preset): official update (the default) 95.5 / 98.3 / 92.5 / 95.8; consistent update (with the
# earlier prefixes of 5 and 10 tokens) 94.3 / 95.0 / 90.8 / 97.4, and with C from 2,000 texts the
# model sampled itself 94.6 / 95.0 / 91.7 / 97.4; at layer 2 (first 20 edits, sampled C) S 91.5.
SMOLLM2_LAYER = 3


@dataclass(frozen=True, kw_only=True)
class EditHyperParams:
    """What ROME and MEMIT share: the optimisation of δ (:mod:`rome_lib.deltas`), the key statistics
    C and the context templates. Built by keyword only; each method sets its own defaults below.

    v_*: Adam on δ, ``v_num_grad_steps`` forward passes as the official loop (which stops before
        stepping on the last one); weight decay ``v_weight_decay·‖δ‖/‖base‖²``; ‖δ‖ clamped to
        ``clamp_norm_factor·‖base‖`` (base: the vector δ is added to); early stop when the *total*
        loss < ``early_stop_loss`` (as the official code; the total bounds the NLL, so the NLL is
        then < 0.05 too).
    kl_factor, kl_prompt: essence-drift term KL(P_edit ‖ P_orig) at the subject's last token of
        ``kl_prompt`` -- the edited distribution first, as the paper's eq. 4 and the official code.
    mom2_*: the key statistics C (see :mod:`rome_lib.covariance`); ``mom2_adjustment=False`` uses C = I.
        ``mom2_corpus`` None means the embedded model's own corpus for "toy" and an error otherwise.
    context_*: the prefixes sampled from the model: (tokens, how many) pairs, top-k, seed, and the
        words they start from (none: after the BOS/EOS token; see :func:`rome_lib.rome.context_templates`).
    """

    v_num_grad_steps: int = 20
    v_lr: float = 0.5
    v_weight_decay: float = 0.5
    clamp_norm_factor: float = 4.0
    kl_factor: float = 0.0625
    kl_prompt: str = "{} is a"
    early_stop_loss: float = 0.05
    mom2_adjustment: bool = True
    mom2_corpus: str | None = None
    mom2_n_samples: int | None = 100_000
    context_lengths: tuple[tuple[int, int], ...] = ((4, 10), (9, 10))
    context_top_k: int = 5
    context_starts: tuple[str, ...] = ()
    seed: int = 0


@dataclass(frozen=True, kw_only=True)
class ROMEHyperParams(EditHyperParams):
    """Everything ROME needs besides the model and the request (the shared fields:
    :class:`EditHyperParams`).

    layer: the MLP whose output projection is rewritten (l*).
    clamp_norm_factor, v_weight_decay: scaled by ‖m‖, the MLP output v* is built on (see ``update``).
    context_lengths: official ``context_template_length_params`` [[5, 10], [10, 10]] are
        ``generate_fast``'s ``max_out_len``, which counts the ``<|endoftext|>`` it starts from: 4 and
        9 generated tokens.
    update: which key the rank-one update maps exactly to v* (see :mod:`rome_lib.rome`).
        ``"official"`` (the default; the paper's released code): u = C⁻¹k̄ from the averaged key, but
        Λ from the bare rewrite prompt's key k_bare, v* = m_bare + δ, and the weight decay and clamp
        scaled by ‖m_bare‖, so Ŵ k_bare = v*. ``"consistent"`` (R-ROME, Gupta et al. 2024): k̄ in both
        places, v* = m̄ + δ with m̄ = W k̄ + b, so Ŵ k̄ = v*.
    """

    layer: int
    update: str = "official"

    def __post_init__(self) -> None:
        if self.update not in UPDATES:
            raise ValueError(f"update={self.update!r}: use one of {', '.join(UPDATES)}.")

    @classmethod
    def for_model(cls, name: str, n_layer: int | None = None) -> "ROMEHyperParams":
        """The preset for ``name`` (toy, gpt2*, GPT-J); other models get the middle third's start."""
        key = name.split("/")[-1].lower()
        if key in ROME_PRESETS:
            return ROME_PRESETS[key]
        if n_layer is None:
            raise KeyError(f"No ROME preset for {name!r}; give n_layer to get a default, or build "
                           "ROMEHyperParams(layer=...) yourself.")
        return cls(layer=max(0, n_layer // 3))


ROME_PRESETS: dict[str, ROMEHyperParams] = {
    "toy": ROMEHyperParams(layer=TOY_LAYER, clamp_norm_factor=TOY_CLAMP, mom2_n_samples=None),
    # gpt2 (124M) has no official preset; layer 5 of 12 sits where its MLP tracing effect peaks.
    "gpt2": ROMEHyperParams(layer=5),
    "gpt2-medium": ROMEHyperParams(layer=8, clamp_norm_factor=3.0),
    "gpt2-large": ROMEHyperParams(layer=12),
    "gpt2-xl": ROMEHyperParams(layer=17),
    "gpt-j-6b": ROMEHyperParams(layer=5),
    "smollm2": ROMEHyperParams(layer=SMOLLM2_LAYER, mom2_corpus="wiki-leads", mom2_n_samples=None),
}


# FT+L's L∞ bound ε in the official hparams/FT/*_constr.json (all at layer 0, lr 5e-4, 25 steps).
OFFICIAL_FT_L_EPSILON = {"gpt2-medium": 2e-3, "gpt2-large": 1e-3, "gpt2-xl": 5e-4, "gpt-j-6b": 5e-5}


@dataclass(frozen=True)
class FTHyperParams:
    """Fine-tuning of one layer's MLP output-projection weight on the new fact.

    Adam (lr, weight_decay) on the mean teacher-forced NLL of the new object after the prompt, up to
    ``num_steps`` steps, stopping once the loss < ``early_stop_loss`` (official: 1e-2). FT+L projects
    ΔW back into the L∞ ball ‖ΔW‖∞ ≤ ``norm_constraint`` after every step; ``None`` = unconstrained FT.
    """

    layer: int
    num_steps: int = 25
    lr: float = 5e-4
    weight_decay: float = 0.0
    norm_constraint: float | None = None
    early_stop_loss: float = 1e-2

    @classmethod
    def for_model(cls, name: str, constrained: bool, n_layer: int | None = None) -> "FTHyperParams":
        """Official values (``hparams/FT``, paper App. E.1): 25 steps, lr 5e-4; FT at layer 1 (GPT-2 XL)
        / 21 (GPT-J); FT+L at layer 0 with ε = 2e-3 (gpt2-medium), 1e-3 (gpt2-large), 5e-4 (GPT-2 XL),
        5e-5 (GPT-J).

        Ours for the rest (the toy, gpt2, other models, and unconstrained FT on gpt2-medium/-large,
        which have no official file): the ROME preset's layer, so the comparison isolates the method;
        with their smaller weights 5e-4 barely moves the fact, so FT uses lr 1e-2 and FT+L lr 5e-3
        with ε = 5e-3 (same 25 steps).
        """
        key = name.split("/")[-1].lower()
        if constrained and key in OFFICIAL_FT_L_EPSILON:
            return cls(layer=0, norm_constraint=OFFICIAL_FT_L_EPSILON[key])
        if key in ("gpt2-xl", "gpt-j-6b") and not constrained:
            return cls(layer=1 if key == "gpt2-xl" else 21)
        layer = ROMEHyperParams.for_model(name, n_layer).layer
        if constrained and key == "toy":
            # ε = 2e-2: the smallest of 5e-3 / 1e-2 / 2e-2 / 5e-2 whose efficacy reaches the paper's
            # FT+L efficacy (ES ≥ 99) on the first 100 toy records (ES 30 / 86 / 100 / 100).
            return cls(layer=layer, lr=2e-2, norm_constraint=2e-2)
        if constrained:
            return cls(layer=layer, lr=5e-3, norm_constraint=5e-3)
        return cls(layer=layer, lr=1e-2)


@dataclass(frozen=True, kw_only=True)
class MEMITHyperParams(EditHyperParams):
    """MEMIT (Meng et al. 2023, "Mass-Editing Memory in a Transformer"; official ``hparams/MEMIT``).

    layers: the critical range whose MLP output projections are rewritten; the target hidden states
        z are optimised at the residual stream output of the last of them.
    mom2_update_weight: λ in ΔW = R Kᵀ (λ C + K Kᵀ)⁻¹, with C = E[k kᵀ] (per token, as ROME's C):
        λ C stands for the keys already stored, K Kᵀ for the new ones (official: 20,000 for GPT-2 XL,
        15,000 for GPT-J).
    v_* / clamp_norm_factor / kl_* / early_stop_loss (:class:`EditHyperParams`): the z optimisation,
        the same loss and loop as ROME's v* (:mod:`rome_lib.deltas`); the decay and the clamp are scaled by the residual stream's norm,
        hence the official clamp of 0.75 instead of ROME's 4.
    context_lengths, context_starts: official MEMIT samples 5 prefixes of 10 tokens, one starting
        with each of "The", "Therefore", "Because", "I", "You" (the word's tokens count in the 10),
        plus the bare prompt; its keys average the bare prompt and the mean of the prefixed prompts
        with equal weight (official ``compute_ks`` averages within each group of templates, then
        over the groups).
    batch_size: facts per batch of the z optimisation (ours: it changes only speed and memory).
    """

    layers: tuple[int, ...]
    mom2_update_weight: float = 15_000.0
    clamp_norm_factor: float = 0.75
    context_lengths: tuple[tuple[int, int], ...] = ((10, 5),)
    context_starts: tuple[str, ...] = ("The", "Therefore", "Because", "I", "You")
    batch_size: int = 64

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers or list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise ValueError(f"MEMIT's layers must be increasing, distinct and ≥ 0, got {self.layers!r}.")
        if self.mom2_update_weight < 0:
            raise ValueError("mom2_update_weight (λ) must be ≥ 0.")
        object.__setattr__(self, "layers", layers)

    @classmethod
    def for_model(cls, name: str, n_layer: int | None = None) -> "MEMITHyperParams":
        """The preset for ``name``; other models get the three layers up to ROME's layer (ours)."""
        key = name.split("/")[-1].lower()
        if key in MEMIT_PRESETS:
            return MEMIT_PRESETS[key]
        top = ROMEHyperParams.for_model(name, n_layer).layer
        return cls(layers=tuple(range(max(0, top - 2), top + 1)))


# Official: gpt2-xl (layers 13-17, λ 20,000, 20 steps) and GPT-J (layers 3-8, λ 15,000, 25 steps),
# both clamp 0.75 and C from 100,000 Wikipedia texts. Ours, the toy: ranges ending at ROME's layer 3,
# swept on one batch of its first 100 records with distinct subjects (official clamp 0.75; S / ES /
# PS / NS): λ 15,000 -- the official value -- barely moves the toy's 512-wide keys (kᵀC⁻¹k ≈ 700, so
# each layer takes ~5% of its residual; ES 0); layers 3 alone, λ 10: 83.2 / 90 / 77.5 / 83;
# 1-3, λ 100 / 300 / 1,000: 80.9 / 90 / 73.5 / 80.7, 83.3 / 86 / 76.5 / 88.4, 67.9 / 61 / 57.5 / 96.4;
# 0-3, λ 30 / 100 / 300: 78.4 / 94 / 70 / 74.8, 81.5 / 93 / 73 / 80.9, 82.1 / 87 / 73.5 / 87.5;
# clamp 1.5 (1-3) lowers NS. Edited one at a time the same facts score S 96.7 (30 records): the
# batch costs the toy more than a large model (100 keys in 512 dimensions). SmolLM2's range ends at
# ROME's layer 3 as GPT-2 XL's ends at its ROME layer 17, and its λ keeps GPT-J's λ per key
# dimension (15,000 / 16,384 × SmolLM2's 1,536 ≈ 1,400). λ measured on one batch of its 60 records
# (benchmarks/memit_lambda.py, the same targets for every λ; S / ES / PS / NS): 500: 86.3 / 98.3 /
# 96.7 / 70.2; 1,400: 86.9 / 96.7 / 95.0 / 73.3; 5,000: 84.7 / 86.7 / 84.2 / 83.4; 15,000: 62.6 /
# 58.3 / 51.7 / 87.7; 50,000: 18.2 / 10 / 18.3 / 99.3 -- the preset has the best S of the five. The
# range is not swept (each layer's C from the Wikipedia leads costs 8-11 CPU-minutes).
# The toy's z steps (ours; 25 is GPT-J's official value): with 20 steps 2 of those 100 targets z end
# below P(new) 0.5 (mean 0.93) and the batch scores S / ES / PS / NS 81.7 / 94 / 72 / 82.1; with 25
# steps none (mean 0.96): 82.5 / 96 / 72.5 / 82.2 (30 steps: 82.7 / 96 / 73.5 / 81.6; 40 steps with
# λ 50: ES 94; clamp 1.0: ES 91).
# The toy's context templates (ours): prefixes after <|endoftext|>, as ROME's, not after the official
# five words -- the toy's tokenizer cuts "Therefore", "Because" and "You" into 4, 6 and 2 pieces, so
# those prefixes are mostly word fragments. On the same 100 facts, seeds 0 / 1 / 2 (S / ES / PS / NS):
# after <|endoftext|> 82.5 / 96 / 72.5 / 82.2, 81.4 / 96 / 71 / 81.0, 81.3 / 93 / 72 / 81.6; after
# the five words 81.8 / 94 / 75 / 78.6, 81.3 / 91 / 75.5 / 79.1, 81.5 / 92 / 73.5 / 81.1: the same S,
# the words trade 3 points of ES and 2 of NS for 3 of PS (docs/PAPER_VS_CODE.md, M1).
TOY_MEMIT_LAYERS = (0, 1, 2, 3)
TOY_MEMIT_LAMBDA = 100.0
TOY_MEMIT_STEPS = 25
MEMIT_PRESETS: dict[str, MEMITHyperParams] = {
    "toy": MEMITHyperParams(layers=TOY_MEMIT_LAYERS, mom2_update_weight=TOY_MEMIT_LAMBDA,
                            v_num_grad_steps=TOY_MEMIT_STEPS, mom2_n_samples=None, context_starts=()),
    "gpt2-xl": MEMITHyperParams(layers=(13, 14, 15, 16, 17), mom2_update_weight=20_000.0),
    "gpt-j-6b": MEMITHyperParams(layers=(3, 4, 5, 6, 7, 8), mom2_update_weight=15_000.0,
                                 v_num_grad_steps=25),
    "smollm2": MEMITHyperParams(layers=(1, 2, 3), mom2_update_weight=1_400.0, mom2_corpus="wiki-leads",
                                mom2_n_samples=None),
}


__all__ = ["EditHyperParams", "UPDATES", "TOY_LAYER", "TOY_CLAMP", "SMOLLM2_LAYER", "ROMEHyperParams", "ROME_PRESETS", "OFFICIAL_FT_L_EPSILON", "FTHyperParams",
           "MEMITHyperParams", "MEMIT_PRESETS", "TOY_MEMIT_LAYERS", "TOY_MEMIT_LAMBDA", "TOY_MEMIT_STEPS"]
