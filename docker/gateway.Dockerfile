# syntax=docker/dockerfile:1
# The gateway: Flask under gunicorn (gthread). Build from the repository root:
#   docker build -f docker/gateway.Dockerfile -t dicom-gateway:local .
# The same image runs the seed one-shot (`dicom-gateway stack seed`) and any other CLI command.

# --- build: install the project and its runtime dependencies into a virtualenv -----------------------------------
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what `pip install .` needs, so tests, docs and the viewer never invalidate this layer.
COPY pyproject.toml README.md ./
COPY gateway ./gateway
# The postgres extra brings psycopg; SQLite needs nothing. Non-editable: the runtime image has no source tree.
RUN python -m venv /opt/dicomgw \
 && /opt/dicomgw/bin/pip install ".[postgres]"

# --- runtime ------------------------------------------------------------------------------------------------------
FROM python:3.11-slim
# Tesseract (Debian's, with its English model) finds burned-in text for the Clean Pixel Data option; nothing
# downloads a model at run time.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
 && rm -rf /var/lib/apt/lists/*
LABEL org.opencontainers.image.title="dicom-gateway" \
      org.opencontainers.image.description="DICOMweb gateway (Flask under gunicorn) for object storage" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed, unprivileged uid/gid so volume ownership is predictable across rebuilds; no login shell, no home files.
RUN groupadd --system --gid 10001 dicomgw \
 && useradd --system --uid 10001 --gid dicomgw --home-dir /var/lib/dicomgw --no-create-home \
            --shell /usr/sbin/nologin dicomgw \
 && install -d -o dicomgw -g dicomgw -m 0750 /var/lib/dicomgw /var/lib/dicomgw/tmp
COPY --from=build /opt/dicomgw /opt/dicomgw
COPY docker/gunicorn.conf.py /etc/dicomgw/gunicorn.conf.py
COPY docker/healthcheck.py /usr/local/lib/dicomgw/healthcheck.py
# Upload spool and Python's own temp files go to the data directory, so the root filesystem can be read-only.
ENV PATH=/opt/dicomgw/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DICOMGW_TMP_DIR=/var/lib/dicomgw/tmp \
    TMPDIR=/var/lib/dicomgw/tmp
WORKDIR /var/lib/dicomgw
# Declared after the chown above: Docker named volumes and ECS Fargate bind mounts both start from the image's copy
# of a declared path, owner included, so uid 10001 can write there under readonlyRootFilesystem.
VOLUME ["/var/lib/dicomgw"]
USER 10001:10001
EXPOSE 8000
# Liveness only (/healthz): a storage or database outage shows on /readyz and must not get the container killed.
HEALTHCHECK --interval=10s --timeout=4s --start-period=30s --retries=3 \
    CMD ["python", "/usr/local/lib/dicomgw/healthcheck.py", "http://127.0.0.1:8000/healthz"]
CMD ["gunicorn", "--config", "/etc/dicomgw/gunicorn.conf.py", "gateway.wsgi:application"]
