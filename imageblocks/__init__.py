"""imageblocks: the fastai book's chapter-6 API for multi-label classification and key points.

Importing it changes nothing process-wide; the settings training needs are applied by
`Learner.fit` and the `imageblocks` command (see `imageblocks.runtime`).
"""

__version__ = "0.1.0"
