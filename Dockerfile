# Build once, install many, as a CI image (docs/artifacts.md). Builds with docker (BuildKit), buildah and
# podman, without a container registry when BASE is a local image (tests/test_image_slow.py builds it):
#
#   docker build --build-arg ARCH=9.0 -t vllm-0.2.2 .
#   buildah build --layers --build-arg ARCH=9.0 --build-arg WHEEL_FROM=context -t vllm-0.2.2 .
#
# Stage `wheel` puts one wheel, its <wheel>.manifest.json and its key (/wheels/KEY) in /wheels:
#   WHEEL_FROM=build (default): `./inv wheel`; a hit in CACHES is copied (checked), a miss compiles once,
#                               GPU-less, for ARCH (the base must have Python's headers; g++ and patch are
#                               installed with apt when it lacks them)
#   WHEEL_FROM=context:         the wheel and manifest in the build context's wheels/ (`./inv wheel --out wheels`),
#                               or the one named by KEY when it holds several
# The runtime stage installs exactly that key with --require-cache (no compiler: nothing is compiled) and runs
# `./inv verify` last, so an image that does not verify fails its build. /wheels is bind-mounted: the wheel
# never becomes a layer of the image. The base needs Python >= 3.10 with venv (and its headers to compile).
# Where TLS to the package index is intercepted, pass that CA bundle as a secret (never baked into a layer):
#   --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt
ARG BASE=python:3.12-slim-bookworm

FROM ${BASE} AS wheel
ARG WHEEL_FROM=build
ARG ARCH=9.0
ARG CACHES=[dir:/wheels]
ARG KEY=
# no `test` extra: the toolkit's own virtualenv needs only what the pipeline runs
ENV CI=true VLLMP_EXTRAS=
COPY . /src
WORKDIR /opt/vllm-provision
RUN --mount=type=cache,target=/root/.cache,id=vllm-provision \
    --mount=type=secret,id=ca_bundle \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then \
      export SSL_CERT_FILE=/run/secrets/ca_bundle PIP_CERT=/run/secrets/ca_bundle REQUESTS_CA_BUNDLE=/run/secrets/ca_bundle; \
    fi; \
    mkdir -p /wheels; \
    case "${WHEEL_FROM}" in \
      context) cp /src/wheels/vllm-*.whl /src/wheels/vllm-*.whl.manifest.json /wheels/ \
               || { echo "error: WHEEL_FROM=context and the build context has no wheels/vllm-*.whl with its .manifest.json" >&2; \
                    echo "hint: ./inv wheel --out wheels (in the build context), or build with WHEEL_FROM=build" >&2; exit 2; } ;; \
      build) if ! command -v g++ >/dev/null || ! command -v patch >/dev/null; then \
               apt-get update -q && apt-get install -y -q --no-install-recommends g++ patch ca-certificates \
               && rm -rf /var/lib/apt/lists/*; fi; \
             cp -a /src/. . && rm -rf wheels; \
             VLLMP_ARTIFACTS__CACHES="${CACHES}" ./inv wheel --arch "${ARCH}" --out /wheels --push ;; \
      *) echo "error: WHEEL_FROM=${WHEEL_FROM} is neither build nor context" >&2; \
         echo "hint: --build-arg WHEEL_FROM=build (compile, or copy a cache hit) or WHEEL_FROM=context (wheels/ in the build context)" >&2; exit 2 ;; \
    esac; \
    rm -rf /src/wheels; \
    if [ -n "${KEY}" ]; then echo "${KEY}" > /wheels/KEY; \
    else \
      set -- /wheels/*.manifest.json; \
      if [ "$#" -ne 1 ]; then \
        echo "error: /wheels holds $# wheel manifests, the runtime stage installs one" >&2; \
        echo "hint: name the wheel's key: --build-arg KEY=<key from its .manifest.json>" >&2; exit 2; fi; \
      python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["key"])' "$1" > /wheels/KEY; \
    fi; \
    echo "wheel: key $(cat /wheels/KEY)"

FROM ${BASE} AS runtime
ARG ARCH=9.0
# the plan of every later `./inv` in the image: the archs the wheel was made for, its cache, no test extra
ENV CI=true VLLMP_EXTRAS= VLLMP_BUILD__ARCH_LIST=${ARCH} VLLMP_ARTIFACTS__CACHES=[dir:/wheels]
COPY --from=wheel /src /opt/vllm-provision
WORKDIR /opt/vllm-provision
# The image's own defaults (its vllm-provision.yaml) pin the key it installs: every later `./inv` in a
# container (verify, smoke) stands for that build and never compiles.
RUN --mount=type=bind,from=wheel,source=/wheels,target=/wheels \
    --mount=type=cache,target=/root/.cache,id=vllm-provision \
    --mount=type=secret,id=ca_bundle \
    set -eu; \
    if [ -s /run/secrets/ca_bundle ]; then \
      export SSL_CERT_FILE=/run/secrets/ca_bundle PIP_CERT=/run/secrets/ca_bundle REQUESTS_CA_BUNDLE=/run/secrets/ca_bundle; \
    fi; \
    if ! command -v patch >/dev/null; then \
      apt-get update -q && apt-get install -y -q --no-install-recommends patch ca-certificates \
      && rm -rf /var/lib/apt/lists/*; fi; \
    key="$(cat /wheels/KEY)"; \
    sed -i "s|^  key: null |  key: ${key} |; s|^  require_cache: false|  require_cache: true |" vllm-provision.yaml; \
    grep -q "^  key: ${key} " vllm-provision.yaml; \
    ./inv provision --require-cache --artifact-key "${key}"; \
    ./inv verify
