from __future__ import annotations

from edge.common.settings import CommonSettings


class StorageSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_STORAGE_HTTP_PORT.
    http_port: int = 8082
