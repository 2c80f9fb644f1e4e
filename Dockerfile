# syntax=docker/dockerfile:1
#
# vllm-gateway container images (README, "Deploy").
#
#   docker build -t vllm-gateway:0.1.0 .                      # default target `vllm`
#   docker build --target slim -t vllm-gateway:0.1.0-slim .   # the gateway alone
#
# `vllm`: the official vLLM image with the gateway added. One container holds the gateway and the
#   vLLM processes it launches (backends with `launch:`) on the same GPU; the backends bind to
#   127.0.0.1, so only the gateway's port is exposed.
# `slim`: the gateway on python slim, for vLLM servers that run elsewhere (Kubernetes, other boxes).
#
# The vLLM base is pinned to v0.33.0, the newest vLLM release and the one the gateway's vLLM
# reference (routes, metrics, flags) is written against. To move, pass
# --build-arg VLLM_IMAGE=vllm/vllm-openai:vX.Y.Z and re-run the real-vLLM tests.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.33.0
ARG PYTHON_IMAGE=python:3.12-slim-bookworm

# ---- wheel: the gateway built once for both targets ------------------------------------------
FROM ${PYTHON_IMAGE} AS wheel
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

# ---- slim: the gateway alone -------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# tini: PID 1 that forwards signals and reaps orphans.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python -m venv /opt/vllm-gateway \
    && /opt/vllm-gateway/bin/pip install --no-cache-dir /wheels/*.whl \
    && ln -s /opt/vllm-gateway/bin/vllm-gateway /usr/local/bin/vllm-gateway
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /etc/vllm-gateway
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/vllm-gateway-entrypoint
COPY deploy/docker/healthcheck.py /opt/vllm-gateway/healthcheck.py
USER 10001:10001
WORKDIR /home/gateway
EXPOSE 8080
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["/opt/vllm-gateway/bin/python", "/opt/vllm-gateway/healthcheck.py", "/health"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/vllm-gateway-entrypoint"]
CMD ["vllm-gateway", "serve"]

# ---- vllm (default): the gateway inside the vLLM image -----------------------------------------
FROM ${VLLM_IMAGE} AS vllm
# HF_HOME and the torch.compile cache live on the /data volume, so a restarted container neither
# downloads the weights again nor recompiles. RUN_AS_USER: the entrypoint starts as root only to
# hand the cache directories (often a root-owned host or RunPod volume) to `gateway`, then drops
# to it; the gateway and every vLLM process run as that user.
ENV HF_HOME=/data/huggingface \
    VLLM_CACHE_ROOT=/data/vllm \
    RUN_AS_USER=gateway \
    PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# Its own virtual environment: the gateway's dependencies never change the versions vLLM was
# built and tested with. Only the `vllm-gateway` command is put on PATH, so `vllm` and `python3`
# stay the image's own (backends are launched with them).
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    python3 -m venv /opt/vllm-gateway \
    && /opt/vllm-gateway/bin/pip install --no-cache-dir /wheels/*.whl \
    && ln -s /opt/vllm-gateway/bin/vllm-gateway /usr/local/bin/vllm-gateway
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/gateway --shell /usr/sbin/nologin gateway \
    && mkdir -p /data/huggingface /data/vllm /etc/vllm-gateway \
    && chown -R gateway:gateway /data
COPY --chmod=0755 deploy/docker/entrypoint.sh /usr/local/bin/vllm-gateway-entrypoint
COPY deploy/docker/healthcheck.py /opt/vllm-gateway/healthcheck.py
VOLUME ["/data"]
WORKDIR /home/gateway
EXPOSE 8080
# /health answers as soon as the gateway listens, while the backends are still loading
# (their progress is in /status and /ready), so a short start period is enough.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["/opt/vllm-gateway/bin/python", "/opt/vllm-gateway/healthcheck.py", "/health"]
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/vllm-gateway-entrypoint"]
CMD ["vllm-gateway", "serve"]
