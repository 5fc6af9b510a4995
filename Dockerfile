# rtnstream: the live RTN correction service, two targets (docs/deploy.md).
#
#   docker build --target cpu -t rtnstream:cpu .    # NumPy backend
#   docker build --target gpu -t rtnstream:gpu .    # + CuPy from its wheels (NVRTC, CUDA runtime and headers)
#
# Both targets start from one Debian 12 (bookworm) image given as BASE_IMAGE: debian:bookworm-slim by default,
# or a base made from Debian's packages where no registry can be reached (deploy/check-image.sh makes one
# with debootstrap). Python 3.11 is Debian's. The GPU target needs no CUDA base image: the CUDA pieces CuPy
# uses come from PyPI (cupy-cuda12x[ctk]), the driver from the host (NVIDIA Container Toolkit).
# PIP_OPTIONS is passed to pip, e.g. "--no-index --find-links /src/wheelhouse" to install from a wheelhouse
# put in the build context (see deploy/check-image.sh). Each target's virtual environment /opt/venv is built
# in a *-build stage and copied into the runtime stage; both run as the non-root user `rtnstream`, serve
# HTTP on port 8080 (config/service.toml; keep EXPOSE, HEALTHCHECK and the config in step) and keep their
# data in the /var/lib/rtnstream volume; /home/rtnstream/sim is the clients' folder (compose mounts a volume).

ARG BASE_IMAGE=debian:bookworm-slim

# ------------------------------------------------------------------------------------------------ base
FROM ${BASE_IMAGE} AS base
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /home/rtnstream rtnstream \
 && install -d -o rtnstream -g rtnstream /var/lib/rtnstream /var/cache/rtnstream /home/rtnstream/sim
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

FROM base AS source
COPY . /src

# ------------------------------------------------------------------------------------------------ cpu
FROM source AS cpu-build
ARG PIP_OPTIONS=
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${PIP_OPTIONS} "/src[service]"

FROM base AS cpu
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RTNSTREAM_CACHE=/var/cache/rtnstream
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
FROM source AS gpu-build
ARG PIP_OPTIONS=
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install ${PIP_OPTIONS} "/src[service,gpu]"

FROM base AS gpu
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 RTNSTREAM_CACHE=/var/cache/rtnstream \
    NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
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
