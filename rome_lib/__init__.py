"""rome_lib: locate and edit factual associations in GPT-style models (ROME, Meng et al. 2022).

One module per idea, on floors that import only downwards (and, within a floor, only modules
listed before them), each import at the top of its file below the top floor (the README's
"Architecture"; ``tests/test_architecture.py`` holds it):

- ground: ``errors`` (one base class, ``RomeError``), ``paths`` (cache root, toy folder);
- models and data: ``hooks`` (``hook_modules``: read and patch named modules), ``hparams``
  (``EditHyperParams`` shared by ROME and MEMIT, presets), ``estimate``, ``data``, ``real_models``
  (``REAL_MODELS``, fetch, convert), ``models`` (``load_model``, layouts), ``tokens`` (subject span,
  top next token, top-k step);
- measurements and the edit record: ``tracing`` (causal tracing), ``plotting`` (its figures),
  ``covariance`` (C = E[k kᵀ]), ``edits`` (``Edit`` with exact undo, request normalisation, target
  ids), ``deltas`` (the one δ loop: ROME's v*, MEMIT's z);
- editing methods: ``rome``, ``baselines`` (FT, FT+L), ``memit``;
- using them: ``methods`` (the registry of editing methods), ``evaluation`` (CounterFact metrics),
  ``zsre``, ``mass_editing``, ``sweep``, ``course`` (the lessons' setup), ``bench``;
- for people: ``widgets`` (tracing explorer, edit playground), ``checks`` (exercise checks,
  autograding), ``__main__`` (the command line, ``models fetch`` included); ``toyworld`` builds
  the embedded model and imports only ``paths``.
"""

__version__ = "0.1.0"
