"""imageblocks: the fastai book's chapter-6 API for multi-label classification and key points."""

from imageblocks.runtime import configure

configure()  # before torch is imported: see imageblocks/runtime.py

__version__ = "0.1.0"
