"""rome_lib: locate and edit factual associations in GPT-style models (ROME, Meng et al. 2022).

One module per idea, on floors that import only downwards (the README's "Architecture"):

- ground: ``errors`` (one base class, ``RomeError``), ``paths`` (cache root, toy folder);
- models and data: ``models``, ``hooks``, ``hparams``, ``estimate``, ``data``, ``real_models``,
  ``tokens`` (subject span, top next token, top-k step), ``plotting``;
- measurements and the edit record: ``tracing`` (causal tracing), ``covariance`` (C = E[k kᵀ]),
  ``edits`` (``Edit`` with exact undo, request normalisation, target ids), ``deltas`` (v*, MEMIT's z);
- editing methods: ``rome``, ``baselines`` (FT, FT+L), ``memit``;
- using them: ``methods`` (the registry of editing methods), ``evaluation`` (CounterFact metrics),
  ``zsre``, ``mass_editing``, ``sweep``, ``course`` (the lessons' setup), ``bench``;
- for people: ``widgets`` (tracing explorer, edit playground), ``checks`` (exercise checks,
  autograding), ``__main__`` (the command line); ``toyworld`` builds the embedded model.
"""

__version__ = "0.1.0"
