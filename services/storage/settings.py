from __future__ import annotations

from edge.common.settings import CommonSettings


class StorageSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    storage_http_port: int = 8082
