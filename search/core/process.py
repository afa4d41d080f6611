"""Flags that describe this process, set once by whoever starts it and read anywhere below."""

from __future__ import annotations

# Set in a CPU worker forked warm by the launcher (search.execution.forked): its MLflow writer
# may then be forked too (see search.tracking.writer).
IN_WORKER = False
