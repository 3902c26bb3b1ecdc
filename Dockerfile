# The trainer/operator image: CUDA + PyTorch (+ flash-attn) with the omnitrain package.
# Build: docker build -t omnitrain:latest .   (needs network access; not built in CI here)
# The same image runs `omnitrain operator` (no GPU needed) and the training pods (torchrun ... omnitrain train).

ARG CUDA_VERSION=12.8.1
ARG UBUNTU=ubuntu22.04

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-devel-${UBUNTU} AS build
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3.11 python3.11-venv python3.11-dev build-essential git ninja-build \
    && rm -rf /var/lib/apt/lists/*
RUN python3.11 -m venv /opt/omnitrain && /opt/omnitrain/bin/pip install --upgrade pip wheel packaging
ENV PATH=/opt/omnitrain/bin:$PATH
# PyTorch with CUDA first (from the PyTorch index), so the package's torch pin is satisfied by a CUDA build.
COPY pyproject.toml README.md /src/
RUN pip install --index-url ${TORCH_INDEX} "torch==2.13.0"
COPY omnitrain /src/omnitrain
# flash-attn compiles against the installed torch; MAX_JOBS bounds the build's memory.
RUN MAX_JOBS=8 pip install --no-build-isolation "/src[trainer,gpu]"

FROM nvidia/cuda:${CUDA_VERSION}-cudnn-runtime-${UBUNTU}
ENV DEBIAN_FRONTEND=noninteractive PYTHONUNBUFFERED=1 PATH=/opt/omnitrain/bin:$PATH
RUN apt-get update && apt-get install -y --no-install-recommends python3.11 libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 65532 --create-home omnitrain
COPY --from=build /opt/omnitrain /opt/omnitrain
# No USER here: training pods write to hostPath folders the kubelet creates as root. The operator's Deployment
# runs as 65532 (securityContext in manifests/operator/deployment.yaml).
# The operator's Deployment and the training pods both set their command; this is only the default.
ENTRYPOINT []
CMD ["omnitrain", "--help"]
