"""rome_lib: locate and edit factual associations in GPT-style models (ROME, Meng et al. 2022).

One module per idea: ``course`` (a lesson's one-line setup), ``models`` (load and describe a model),
``hooks`` (read/patch activations), ``tracing`` (causal tracing), ``rome`` (the rank-one edit),
``evaluation`` (CounterFact metrics).
"""

__version__ = "0.1.0"
