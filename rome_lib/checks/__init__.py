"""Checks for the exercises: ``check_xxx(fn)`` prints "✓ passed" or a specific hint.

One re-export per line, so that each exercise module can add its own. Every verdict is also
recorded as a :class:`CheckResult` (``last_result()``), which ``python -m rome_lib.checks grade``
reads to grade notebooks.
"""

from .verdict import CheckResult, last_result  # noqa: F401

from .tracing import check_buckets  # noqa: F401
from .tracing import check_corrupt  # noqa: F401
from .tracing import check_restore  # noqa: F401
from .tracing import check_subject_range  # noqa: F401
from .tracing import check_trace  # noqa: F401
from .tracing import check_window  # noqa: F401
from .editing import check_compute_k  # noqa: F401
from .editing import check_efficacy  # noqa: F401
from .editing import check_neighborhood  # noqa: F401
from .editing import check_rank_one_update  # noqa: F401
from .editing import check_undo  # noqa: F401
from .editing import check_v_loss  # noqa: F401
from .analysis import check_choose_layers  # noqa: F401
from .analysis import check_ps_ns  # noqa: F401
from .analysis import check_severed_share  # noqa: F401
from .analysis import check_subject_lengths  # noqa: F401
from .capstone import check_capstone  # noqa: F401
from .memit import check_batched_update  # noqa: F401
from .memit import check_spread  # noqa: F401
