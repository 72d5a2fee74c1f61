from __future__ import annotations

from pydantic import Field

from edge.common.settings import CommonSettings


class StorageSettings(CommonSettings):
    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_STORAGE_HTTP_PORT.
    http_port: int = 8082
    # Seconds between scrub passes; 0 turns the loop off (POST /api/scrub still runs one).
    scrub_interval: float = Field(600.0, ge=0)
    # Objects younger than this (seconds) are left alone: their C-STORE and ingestion may still
    # be in flight. Longer than the store deadline plus any ingestion lag worth waiting for.
    scrub_grace: float = Field(300.0, ge=0)
    # Keys per catalog lookup: what one pass holds in memory at a time.
    scrub_batch: int = Field(500, ge=1, le=10_000)
    # Announcements per second at most, so a scrub after an outage does not flood ingestion;
    # 0 means no limit.
    scrub_rate: float = Field(50.0, ge=0)
