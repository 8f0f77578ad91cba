"""The service's app, defined in the runtime (`imageblocks_runtime.serve.app`); importable from
here as before."""

from imageblocks_runtime.serve.app import (
    DEFAULT_MAX_PIXELS,
    MULTIPART_OVERHEAD,
    CamProvider,
    check_header,
    create_app,
    receive_upload,
    serve,
    sniff_format,
)

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "MULTIPART_OVERHEAD",
    "CamProvider",
    "check_header",
    "create_app",
    "receive_upload",
    "serve",
    "sniff_format",
]
