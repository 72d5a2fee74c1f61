from __future__ import annotations

from pathlib import Path

from edge.common.settings import CommonSettings


class ListenerSettings(CommonSettings):
    """The DICOM front door. Timeouts are seconds; sizes are bytes."""

    ae_title: str = "EDGE"
    dicom_host: str = "0.0.0.0"
    dicom_port: int = 11112
    # DICOM TLS (PS3.15 B.1, TLS 1.2+) on a port of its own, open when a certificate and key are
    # set (`make run` makes development ones). With a CA file, a client certificate is asked for
    # and must chain to it when sent; the registry says which AEs must send one naming them.
    # With a CRL file (PEM, read at start), a revoked client certificate fails the handshake.
    tls_port: int = 2762
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_crl_file: Path | None = None
    http_host: str = "0.0.0.0"
    http_port: int = 8080
    max_associations: int = 32
    max_pdu_size: int = 1 << 20
    max_instance_size: int = 4 << 30
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 60.0
    # Time a C-STORE may spend making the instance durable (S3 put + confirmed publish). It must
    # stay below the peer's DIMSE timeout so the peer hears our failure rather than its own.
    store_deadline: float = 20.0
    admission_cache_ttl: float = 30.0
    # Seconds one page of C-FIND matches (one query.find RPC) may take.
    find_timeout: float = 15.0
    # Where received instances are spooled before they stream to S3 (None: the system default).
    spool_dir: Path | None = None
    # Most matches one QIDO-RS response carries: a search without `limit`, or with a larger one,
    # gets this many (PS3.18 8.3.4.4.1 maxResults). Each search is one query.find RPC, under
    # find_timeout.
    qido_max_limit: int = 1000
    # WADO-RS/WADO-URI: seconds one retrieval.locate page may take, and how many objects a
    # study or series retrieval fetches from S3 ahead of the one it is sending, holding at most
    # wado_prefetch_bytes of them (beyond the first): the memory one retrieval takes.
    locate_timeout: float = 15.0
    wado_prefetch: int = 16
    wado_prefetch_bytes: int = 32 << 20
    # C-MOVE: seconds to wait for each reply of the retrieval service (one after a sub-operation
    # at most every 0.2 s, so above its connect + ACSE + DIMSE timeouts towards a destination),
    # else 0xA702.
    move_reply_timeout: float = 90.0
    # The OHIF viewer at /viewer: the dist/ directory of the npm package @ohif/app (`make viewer`
    # fetches it; `make run` sets this). None or missing: /viewer answers 503 saying how.
    viewer_dir: Path | None = None
