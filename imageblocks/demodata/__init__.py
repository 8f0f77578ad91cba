"""Deterministic demo datasets in the on-disk formats of PASCAL VOC 2007 and BIWI head pose.

`make_demo_multilabel` draws the 20 VOC classes as procedural shapes on cluttered backgrounds,
with the label sets, split and sizes of real VOC 2007 images (fastai's `pascal_2007` layout).
`make_demo_points` draws head-like figures whose image centre is exactly the projection of the
head position in each `frame_XXXXX_pose.txt` through `rgb.cal` (fastai's `biwi_head_pose`
layout). Every image has its own seeded generator, so the output does not depend on how the
work is split between processes.

Hand-written because the book's two datasets must be usable with no network: the modules are
`canvas` (colours, backgrounds, noise), `pen` and `shapes` (the VOC objects), `voc2007` (the
real dataset's label statistics), `multilabel` (the VOC-like dataset), `poses` (BIWI geometry
and text files), `points` (the BIWI-like dataset) and `output` (atomic, parallel writing).
`untar_data(URLs.DEMO_MULTILABEL)` and `untar_data(URLs.DEMO_POINTS)` call the two makers.
"""

from imageblocks.demodata.multilabel import (
    MAX_OBJECTS,
    make_demo_multilabel,
    render_multilabel_image,
)
from imageblocks.demodata.points import make_demo_points
from imageblocks.demodata.poses import (
    BIWI_FOCAL,
    BIWI_PRINCIPAL,
    FrameSpec,
    frame_specs,
    project_head,
)
from imageblocks.demodata.shapes import render_object
from imageblocks.demodata.voc2007 import VOC_CLASSES

__all__ = [  # the modules too, so that the API reference documents each of them
    "canvas",
    "multilabel",
    "output",
    "pen",
    "points",
    "poses",
    "shapes",
    "voc2007",
    "BIWI_FOCAL",
    "BIWI_PRINCIPAL",
    "MAX_OBJECTS",
    "VOC_CLASSES",
    "FrameSpec",
    "frame_specs",
    "make_demo_multilabel",
    "make_demo_points",
    "project_head",
    "render_multilabel_image",
    "render_object",
]
