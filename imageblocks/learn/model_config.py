"""The schema of an export folder's `config.json`: defined in the runtime
(`imageblocks_runtime.config`), re-exported here."""

from imageblocks_runtime.config import (
    FORMAT,
    FORMAT_VERSION,
    LIMITS,
    REDO,
    TASK_LOSSES,
    TASKS,
    ExportError,
    Limits,
    parse_config,
    validate_config,
)

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "LIMITS",
    "REDO",
    "TASKS",
    "TASK_LOSSES",
    "ExportError",
    "Limits",
    "parse_config",
    "validate_config",
]
