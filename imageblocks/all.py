"""Everything the book's chapter-6 code uses: `from imageblocks.all import *`.

This is the only star-import surface of the package (the book's `from fastai.vision.all import *`).
"""

import math
from functools import partial

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from imageblocks.data.block import DataBlock
from imageblocks.data.blocks import (
    CategoryBlock,
    ImageBlock,
    MultiCategoryBlock,
    PointBlock,
    RegressionBlock,
    TransformBlock,
    Vocab,
)
from imageblocks.data.datasets import Datasets
from imageblocks.data.loaders import DataLoader, DataLoaders, collate
from imageblocks.data.sources import URLs, get_files, get_image_files, untar_data
from imageblocks.data.splitters import (
    ColSplitter,
    FuncSplitter,
    GrandparentSplitter,
    IndexSplitter,
    MaskSplitter,
    ParentSplitter,
    RandomSplitter,
)
from imageblocks.errors import CollateError, ImageblocksError, ItemError
from imageblocks.image import PILImage, open_image
from imageblocks.learn.callbacks import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    Recorder,
)
from imageblocks.learn.cam import CAM
from imageblocks.learn.checkpoint import CheckpointError, load_checkpoint
from imageblocks.learn.interpret import (
    ClassificationInterpretation,
    Interpretation,
    MultiLabelInterpretation,
    PointsInterpretation,
)
from imageblocks.learn.learner import Learner, cnn_learner, vision_learner
from imageblocks.learn.loading import load_learner
from imageblocks.learn.lr_find import SuggestedLRs, minimum, slide, steep, valley
from imageblocks.learn.metrics import (
    APScoreMulti,
    F1ScoreMulti,
    PrecisionMulti,
    RecallMulti,
    accuracy,
    accuracy_multi,
    error_rate,
    mae,
    mean_average_precision,
    mse,
    pixel_error,
    rmse,
)
from imageblocks.learn.model_config import ExportError
from imageblocks.learn.tracker import (
    EarlyStoppingCallback,
    ReduceLROnPlateau,
    SaveModelCallback,
    TrackerCallback,
)
from imageblocks.learn.tracking import CSVLogger, MLflowCallback, TensorBoardCallback
from imageblocks.lists import L, first
from imageblocks.losses import (
    BCEWithLogitsLossFlat,
    CrossEntropyLossFlat,
    L1LossFlat,
    MSELossFlat,
    binary_cross_entropy,
)
from imageblocks.models.backbones import (
    convnext_tiny,
    create_body,
    create_vision_model,
    efficientnet_lite0,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
    resnet152,
)
from imageblocks.models.head import SigmoidRange, create_head, sigmoid_range
from imageblocks.paths import Path
from imageblocks.seeding import set_seed
from imageblocks.show import plot_function, show_batch, show_results
from imageblocks.tensors import tensor, to_cpu, to_device
from imageblocks.transforms.batch import aug_transforms
from imageblocks.transforms.geometry import AffineWarp, Dihedral, Flip, Rotate, Warp, Zoom
from imageblocks.transforms.item import PadMode, RandomResizedCrop, Resize, ResizeMethod
from imageblocks.transforms.lighting import Brightness, Contrast, Lighting
from imageblocks.transforms.normalize import Normalize, imagenet_stats

__all__ = [name for name in dir() if not name.startswith("_")]
