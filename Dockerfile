# syntax=docker/dockerfile:1
# DICOM Edge: one image, one CLI. `docker run IMAGE run listener` (or ingestion, storage, auth),
# `docker run IMAGE migrate` for the one-shot database migration.

# --- build: install the project into a self-contained venv ------------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/edge
WORKDIR /src
# .dockerignore is an allow-list: only pyproject.toml, libs/ and services/ reach the context.
COPY . .
RUN /opt/edge/bin/pip install . \
 && /opt/edge/bin/edge --help >/dev/null

# --- runtime ------------------------------------------------------------------------------------
FROM python:3.11-slim
ENV PATH=/opt/edge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp
# Numeric uid/gid so Kubernetes' runAsNonRoot can verify the user without /etc/passwd lookups.
RUN groupadd --system --gid 10001 edge \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin edge
COPY --from=build /opt/edge /opt/edge
USER 10001:10001
WORKDIR /tmp
# listener: DICOM 11112, DICOM TLS 2762 + HTTP 8080; ingestion 8081; storage 8082; auth 8083
# (HTTP: /healthz, /readyz, /metrics). The root filesystem may be read-only: only /tmp needs to
# be writable.
EXPOSE 11112 2762 8080 8081 8082 8083
STOPSIGNAL SIGTERM
ENTRYPOINT ["edge"]
CMD ["--help"]
