from __future__ import annotations

from edge.common.settings import CommonSettings


class QuerySettings(CommonSettings):
    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_QUERY_HTTP_PORT.
    http_port: int = 8084
    # Most matches one C-FIND or QIDO request may return (PS3.4 gives no status for "too many":
    # see the conformance statement for what the caller gets past it).
    find_max_results: int = 1000
    # PN matching ignores case unless this is set (PS3.4 C.2.2.2.1 leaves it to the SCP).
    find_case_sensitive_names: bool = False
    db_pool_size: int = 8
    # Statement timeout for one query page, milliseconds: a pathological wildcard cannot hold a
    # connection for long.
    find_statement_timeout_ms: int = 10_000
