# megadepth on a CUDA PyTorch image, with pdsh and ssh for the multi-node DeepSpeed launcher.
#   docker build -t megadepth .
#   docker run --gpus all --rm -v $PWD/data:/data -v $PWD/runs:/runs megadepth \
#       train /opt/megadepth/configs/quickstart.yaml --set data.path=/data/sample --set train.out_dir=/runs/quickstart
# (the run directory must be on a mounted volume: with --rm, anything written inside the container is lost)
# The -devel base carries nvcc, which DeepSpeed needs to JIT-build its fused CUDA ops.
# Hostfile launches between containers need sshd running with host keys and your public key; none are
# baked in (every container would share them): e.g. start each worker with
#   -v ~/.ssh/id_ed25519.pub:/root/.ssh/authorized_keys:ro --entrypoint sh megadepth -c "ssh-keygen -A && /usr/sbin/sshd -D"
ARG BASE_IMAGE=pytorch/pytorch:2.9.1-cuda12.8-cudnn9-devel
FROM ${BASE_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    PDSH_RCMD_TYPE=ssh \
    WANDB_MODE=offline

# pdsh and ssh: the DeepSpeed launcher starts the other nodes' ranks through them (hostfile runs);
# libaio for DeepSpeed's async I/O op.
RUN apt-get update \
    && apt-get install -y --no-install-recommends pdsh openssh-client openssh-server libaio-dev git \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /run/sshd

WORKDIR /opt/megadepth
COPY pyproject.toml README.md ./
COPY megadepth ./megadepth
COPY data_prep ./data_prep
COPY launch ./launch
COPY configs ./configs
# torch comes from the base image (the package asks only for torch>=2.4, so pip keeps it)
RUN pip install ".[hf]" && megadepth --help > /dev/null

ENTRYPOINT ["megadepth"]
CMD ["--help"]
