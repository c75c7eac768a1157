"""Checks for the exercises: ``check_xxx(fn)`` prints "✓ passed" or a specific hint.

One re-export per line, so that each exercise module can add its own.
"""

from .tracing import check_buckets  # noqa: F401
from .tracing import check_corrupt  # noqa: F401
from .tracing import check_restore  # noqa: F401
from .tracing import check_subject_range  # noqa: F401
from .tracing import check_trace  # noqa: F401
from .tracing import check_window  # noqa: F401
