# A stand-in for python:3.11-slim-bookworm, from Debian packages (no image registry here):
# Debian bookworm's python3 is 3.11. Built by deploy/e2e/run.sh on the debootstrap'd base.
ARG BASE_IMAGE=vidserve-e2e/debian:bookworm
FROM ${BASE_IMAGE}
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-pip python3-venv python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# The host's CA bundle (a TLS-inspecting proxy's root may be in it): pip and uv inside the build
# verify PyPI against it. Debian's pip refuses to install into the system Python without
# PIP_BREAK_SYSTEM_PACKAGES (the official image's Python is not Debian's).
COPY host-ca-bundle.crt /etc/ssl/certs/host-ca-bundle.crt
ENV SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/host-ca-bundle.crt \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \
    UV_NATIVE_TLS=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    LANG=C.UTF-8
CMD ["python3"]
