# syntax=docker/dockerfile:1.7
# One image serves every pipeline component. Its tag is the package version:
#   make image  ->  docker build --build-arg VERSION=<pyproject version> -t <repo>:<version> .
# This is the GPU path: on Linux x86_64, PyPI's torch wheel is the CUDA build (CUDA libraries come
# as wheels; the node supplies the driver). The CPU path (Makefile, CI) pins the same torch release.
FROM python:3.11-slim-bookworm

ARG VERSION=0.1.0
ARG TORCH_VERSION=2.13.0
ARG IMAGE_REPO=ghcr.io/selective-amnesia/amnesia

LABEL org.opencontainers.image.title="selective-amnesia" \
      org.opencontainers.image.description="Compliance unlearning for LLMs: every Kubeflow pipeline component" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    GIT_PYTHON_REFRESH=quiet \
    HF_HUB_DISABLE_TELEMETRY=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    ATEN_CPU_CAPABILITY=avx2 \
    MKL_CBWR=AVX2 \
    ONEDNN_MAX_CPU_ISA=AVX2 \
    AMNESIA_IMAGE_REF="${IMAGE_REPO}:${VERSION}" \
    AMNESIA_CODE_VERSION="${VERSION}"

# torch first, in its own layer: it is by far the largest and changes least often.
RUN pip install "torch==${TORCH_VERSION}"

WORKDIR /opt/amnesia
COPY pyproject.toml README.md ./
COPY amnesia ./amnesia
COPY components ./components
COPY pipelines ./pipelines
RUN pip install "./[server]" && python -c "import amnesia, components, pipelines, psycopg, flask_wtf"

# Non-root, numeric so that Kubernetes' runAsNonRoot can check it.
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin amnesia
USER 10001
WORKDIR /home/amnesia
ENV HOME=/home/amnesia HF_HOME=/home/amnesia/.cache/huggingface

CMD ["amnesia", "--help"]
