"""imageblocks-runtime: run a model folder exported by imageblocks without PyTorch."""

__version__ = "0.1.0"
