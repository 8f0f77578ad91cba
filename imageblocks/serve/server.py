"""uvicorn for the service, defined in the runtime (`imageblocks_runtime.serve.server`);
importable from here as before."""

from imageblocks_runtime.serve.server import (
    HeaderTimeoutH11,
    allowed_hosts_for,
    h11_protocol,
    log_config,
    uvicorn_config,
)

__all__ = ["HeaderTimeoutH11", "allowed_hosts_for", "h11_protocol", "log_config", "uvicorn_config"]
