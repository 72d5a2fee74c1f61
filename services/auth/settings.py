from __future__ import annotations

from edge.common.settings import CommonSettings


class AuthSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    auth_http_port: int = 8083
