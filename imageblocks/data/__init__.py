"""Data: blocks, DataBlock, splitters, sources and datasets."""
