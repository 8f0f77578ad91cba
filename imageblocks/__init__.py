"""imageblocks: the fastai book's chapter-6 API for multi-label classification and key points.

Importing it changes nothing process-wide; the settings training needs are applied by
`Learner.fit` and the `imageblocks` command (see `imageblocks.runtime`).
"""

__version__ = "0.1.0"

import sys as _sys

if "ipykernel" in _sys.modules and "tqdm.auto" not in _sys.modules:
    # timm imports huggingface_hub, which imports tqdm.auto: in a Jupyter kernel without
    # ipywidgets that prints "IProgress not found" and falls back to tqdm's text bar. Import it
    # first with that one warning silenced (imageblocks draws its own progress table).
    import warnings as _warnings

    with _warnings.catch_warnings():
        _warnings.filterwarnings("ignore", message="IProgress not found")
        import tqdm.auto  # noqa: F401
