from __future__ import annotations

from edge.common.settings import CommonSettings


class IngestionSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_INGESTION_HTTP_PORT.
    http_port: int = 8081
    # Seconds without a new instance before a study is announced (study.arrived/updated).
    stable_after: float = 60.0
    # How often each replica looks for due studies and unpublished events committed by others
    # (its own commits wake it at once). Announcement latency is at most stable_after + this.
    announce_interval: float = 0.5
    relay_interval: float = 0.5
    # Published events stay in the change feed this long (seconds; default 30 days).
    changes_retention: float = 30 * 24 * 3600.0
    # Most events one GET /api/changes returns.
    changes_max_limit: int = 1000
    # Messages in flight per ingestion process: enough to keep the database busy.
    prefetch: int = 32
    db_pool_size: int = 8
