"""The service's class activation maps (`POST /predict?cam=1`): a `CamProvider` made from the
PyTorch learner of a model folder, which `imageblocks serve MODEL --cam` passes to the runtime's
app (the runtime itself has no PyTorch)."""

from __future__ import annotations

import os
import threading

from imageblocks.learn.learner import Learner
from imageblocks.learn.loading import load_learner
from imageblocks_runtime.serve.app import CamProvider

__all__ = ["learner_cams"]


def learner_cams(model: Learner | str | os.PathLike) -> CamProvider:
    """Grad-CAM of the predicted labels of an image, as PNGs by label, from `model` (a learner
    or a model folder, loaded on the CPU); one map at a time (the hooks are per model)."""
    learn = model if isinstance(model, Learner) else load_learner(model, "cpu")
    lock = threading.Lock()

    def cams(data: bytes) -> dict[str, bytes]:
        with lock:
            return {c.label: c.png() for c in learn.cam(data)}

    return cams
