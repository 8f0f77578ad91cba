"""The CUDA path, on a GPU only (skipped elsewhere; `pytest -m cuda` runs these and the other
CUDA tests: benchmarks/gpu_check.sh does)."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch

from tests.conftest import voc_block

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.fixture
def cuda_learner(voc):
    from imageblocks.learn.learner import vision_learner
    from imageblocks.learn.metrics import accuracy_multi
    from imageblocks.transforms.item import RandomResizedCrop

    df, dblock = voc_block(voc, RandomResizedCrop(64, min_scale=0.35))
    dls = dblock.dataloaders(df, bs=4, num_workers=0, device="cuda")
    return vision_learner(dls, "efficientnet_lite0", metrics=partial(accuracy_multi, thresh=0.2))


def test_batches_the_model_and_autocast_are_on_the_gpu(cuda_learner):
    learn = cuda_learner
    xb, yb = learn.dls.one_batch()
    assert xb.device.type == "cuda" and yb.device.type == "cuda"
    assert next(learn.model.parameters()).device.type == "cuda"
    want = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert learn.autocast_dtype == want  # "auto" on CUDA


def test_fine_tune_on_the_gpu_trains_and_predicts(cuda_learner, voc, tmp_path):
    learn = cuda_learner
    torch.cuda.reset_peak_memory_stats()
    learn.fine_tune(1, base_lr=3e-3, freeze_epochs=1)
    assert len(learn.recorder.values) == 2
    assert all(math.isfinite(float(v)) for v in learn.recorder.losses)
    preds, targs = learn.get_preds()
    assert preds.shape == targs.shape and torch.isfinite(preds).all()
    assert 0 <= float(preds.min()) and float(preds.max()) <= 1  # sigmoid applied
    assert torch.cuda.max_memory_allocated() > 0
    learn.export(tmp_path / "model")
    from imageblocks.learn.loading import load_learner

    again = load_learner(tmp_path / "model", device="cuda")
    labels, _, probs = again.predict(voc / "train" / "000001.jpg")
    assert len(probs) == len(learn.dls.vocab)


def test_fp16_scales_the_loss_on_the_gpu(cuda_learner):
    from imageblocks.learn.callbacks import Callback

    class SeesScaler(Callback):
        def __init__(self) -> None:
            self.scalers: list = []

        def after_batch(self, learn) -> None:
            self.scalers.append(learn.grad_scaler)

    learn, seen = cuda_learner.to_fp16(), SeesScaler()
    learn.fit_one_cycle(1, 1e-3, cbs=[seen])
    assert seen.scalers and all(s is not None for s in seen.scalers)
    assert all(math.isfinite(float(v)) for v in learn.recorder.losses)
