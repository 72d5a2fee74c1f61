from __future__ import annotations

from pathlib import Path

from edge.common.settings import CommonSettings


class RetrievalSettings(CommonSettings):
    """Locating instances and pushing them to C-MOVE destinations. Timeouts are seconds."""

    http_host: str = "0.0.0.0"
    # EDGE_HTTP_PORT in its own container; `edge up` sets it from EDGE_RETRIEVAL_HTTP_PORT.
    http_port: int = 8085
    # Our AE title: the Calling AE of C-MOVE's sub-operation associations.
    ae_title: str = "EDGE"
    db_pool_size: int = 4
    # One page of retrieval.locate: the default and the most a caller may ask for.
    locate_limit: int = 5000
    locate_max_limit: int = 10_000
    locate_statement_timeout_ms: int = 10_000
    # C-MOVE sub-operations (C-STORE SCU): a dead destination must fail fast, never hang the
    # mover. Connect is the TCP connect; ACSE the association answer; DIMSE each C-STORE-RSP.
    move_connect_timeout: float = 5.0
    move_acse_timeout: float = 10.0
    move_dimse_timeout: float = 30.0
    move_network_timeout: float = 30.0
    # C-MOVEs one replica performs at once (more wait for a slot).
    max_moves: int = 8
    # Associations opened in parallel to one destination for one C-MOVE.
    move_associations: int = 2
    # Objects read from S3 ahead of the one being sent, per association (each in memory up to
    # 4 MiB, else in a spool file): S3 reads overlap the sends; memory stays bounded.
    move_read_ahead: int = 2
    # Largest PDU we accept on the destination association (the destination picks its own).
    move_max_pdu_size: int = 1 << 20
    # DICOM TLS towards a destination registered with TLS required: its certificate is verified
    # against this CA (the system's without one), and ours presented when set. With a CRL file
    # (PEM, read at start), a destination certificate it lists as revoked fails the handshake;
    # fail closed, as on the listener: the destination's CA must have a current CRL in it.
    tls_ca_file: Path | None = None
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_crl_file: Path | None = None
    # Where objects are spooled from S3 before they are sent (None: the system default).
    spool_dir: Path | None = None
