"""HTTP service for an exported model: a JSON API (`/predict`, `/info`, `/health`) and one web page."""

from imageblocks.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
