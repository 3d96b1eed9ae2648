# megadepth on a CUDA PyTorch image. Two targets:
#   docker build -t megadepth .                                  # default: runs as the unprivileged user
#                                                                # 'megadepth' (uid 10001), no sshd
#   docker build --target hostfile -t megadepth:hostfile .       # adds sshd for hostfile (pdsh) launches
#
#   docker run --gpus all --rm -v $PWD/data:/data -v $PWD/runs:/runs megadepth \
#       train /opt/megadepth/configs/quickstart.yaml --set data.path=/data/sample --set train.out_dir=/runs/quickstart
# (the run directory must be on a mounted volume: with --rm, anything written inside the container is lost;
# the volume must be writable by uid 10001, or run with --user "$(id -u):$(id -g)" to write as yourself.)
#
# Base image: a tag, not a digest. A tag can be moved by its publisher (or by whoever controls the registry
# account) to other contents, so two builds of this file may not be the same. For reproducible or audited
# builds, pin the digest you reviewed:
#   docker buildx imagetools inspect pytorch/pytorch:2.10.0-cuda12.8-cudnn9-devel   # prints sha256:...
#   docker build --build-arg BASE_IMAGE=pytorch/pytorch@sha256:<digest> -t megadepth .
# The -devel base carries nvcc, which DeepSpeed needs to JIT-build its fused CUDA ops.
# torch 2.10 at least: checkpoints are loaded weights-only, which earlier torch lets a crafted file bypass.
ARG BASE_IMAGE=pytorch/pytorch:2.10.0-cuda12.8-cudnn9-devel

FROM ${BASE_IMAGE} AS common

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PDSH_RCMD_TYPE=ssh \
    WANDB_MODE=offline \
    XDG_CACHE_HOME=/tmp/.cache \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    WANDB_CONFIG_DIR=/tmp/.config/wandb \
    MPLCONFIGDIR=/tmp/.config/matplotlib
# caches under /tmp: writable for the image's user and for any --user uid (whose HOME may be /)

# pdsh and the ssh client: the DeepSpeed launcher starts other nodes' ranks through them (hostfile runs);
# libaio for DeepSpeed's async I/O op. No ssh server here: only the hostfile target needs one.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pdsh openssh-client libaio-dev git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/megadepth
COPY pyproject.toml README.md ./
COPY megadepth ./megadepth
COPY data_prep ./data_prep
COPY launch ./launch
COPY configs ./configs
# torch comes from the base image (the package asks only for torch>=2.10, so pip keeps it)
RUN pip install ".[hf]" && megadepth --help > /dev/null

ENTRYPOINT ["megadepth"]
CMD ["--help"]

# ---- hostfile launches between containers: sshd, which must run as root ----
# No host keys or authorized keys are baked in (every container would share them): start each worker with
#   -v ~/.ssh/id_ed25519.pub:/root/.ssh/authorized_keys:ro --entrypoint sh megadepth:hostfile \
#       -c "ssh-keygen -A && /usr/sbin/sshd -D"
FROM common AS hostfile
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-server \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/sshd

# ---- the default: an unprivileged user, no ssh server ----
FROM common AS runtime
RUN useradd --create-home --uid 10001 --shell /bin/bash megadepth
USER megadepth
