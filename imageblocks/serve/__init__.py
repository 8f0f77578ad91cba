"""The HTTP service, from the runtime (`imageblocks_runtime.serve`), plus what needs PyTorch: the
class activation maps of `?cam=1` (`cam.learner_cams`)."""

from imageblocks_runtime.serve.app import create_app, serve

__all__ = ["create_app", "serve"]
