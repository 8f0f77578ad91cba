"""`Task`: what a model does; one value per kind of target, as config.json's `task` names it."""

from __future__ import annotations

import enum

__all__ = ["Task"]


class Task(str, enum.Enum):
    """What a model trained on a target block does; the values are config.json's `task`."""

    MULTILABEL = "multilabel"
    CATEGORY = "category"
    POINTS = "points"
    REGRESSION = "regression"

    def __str__(self) -> str:
        return self.value
