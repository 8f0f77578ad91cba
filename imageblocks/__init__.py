"""imageblocks: the fastai book's chapter-6 API for multi-label classification and key points."""

__version__ = "0.1.0"
