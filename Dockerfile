# syntax=docker/dockerfile:1.7
# Build once, install many, as a CI image (docs/artifacts.md). Not built by the toolkit's own CI, which
# reaches no container registry: the recipe's `./inv` command lines are checked there (tests/test_artifacts.py).
#
#   docker build --build-arg ARCH=9.0 -t vllm-0.2.2 .
#   docker build --build-arg ARCH=9.0 --build-arg CACHES='[dir:/wheels, pypi:https://ci@pypi.corp/]' ...
#
# Stage `wheel` runs the toolkit: a cache hit fetches the wheel, a miss compiles once (GPU-less, for ARCH)
# and makes the wheel with its manifest. The runtime stage installs exactly that key from the cache with
# --require-cache (no compiler, nothing compiled) and runs `./inv verify`; the wheel is bind-mounted, so it
# never becomes a layer of the image.
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS wheel
# g++ and patch for the build (nvcc and torch come from the lock's wheels)
RUN apt-get update && apt-get install -y --no-install-recommends g++ patch ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vllm-provision
COPY . .
ARG ARCH=9.0
ARG CACHES=[dir:/wheels]
ENV CI=true VLLMP_ARTIFACTS__CACHES=${CACHES}
RUN --mount=type=cache,target=/root/.cache \
    ./inv wheel --arch "${ARCH}" --out /wheels --push \
    && .venv/bin/python -c "import json, pathlib; m = max(pathlib.Path('/wheels').glob('*.manifest.json'), key=lambda p: p.stat().st_mtime); pathlib.Path('/wheels/KEY').write_text(json.loads(m.read_text())['key'])"

FROM ${BASE} AS runtime
# patch for the patch step; no compiler: the key is pinned, nothing is compiled
RUN apt-get update && apt-get install -y --no-install-recommends patch ca-certificates \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/vllm-provision
COPY . .
ARG ARCH=9.0
ENV CI=true VLLMP_ARTIFACTS__CACHES=[dir:/wheels]
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache \
    ./inv provision --arch "${ARCH}" --require-cache --artifact-key "$(cat /wheels/KEY)" \
    && ./inv verify --arch "${ARCH}"
