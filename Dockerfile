# syntax=docker/dockerfile:1
# edgeface images, two targets built from one base:
#   docker build --target runtime -t edgeface:runtime .   # the on-device runtime only: no torch
#   docker build --target full -t edgeface:full .         # export toolkit (CPU torch); the default target
#
#   docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/../shared:/shared:ro" \
#       -v "$PWD/artifacts:/app/artifacts" edgeface:full
#       runs the README quick start; ../shared is mounted at /shared, which is ../shared seen from /app
#       (the export's output folder is a pack: artifacts, specs, the face detector, licences, manifest)
#   docker run --rm -v "$PWD/artifacts:/pack:ro" -v "$PWD/faces:/faces:ro" edgeface:runtime \
#       verify /faces/a.jpg /faces/b.jpg
#       the runtime image reads the pack mounted at /pack ($EDGEFACE_MODEL): its default artifact and its
#       detector, checked against the pack's manifest; no ../shared. `--artifact NAME` picks another
#       artifact of the pack; an archived pack (.tar.gz, .zip) is mounted as a file and named with --model.
#
# The install steps are the README's and CI's commands (pip install '.[extra]'), so CI exercises them;
# tests/test_deploy_dockerfile.py keeps them in step. Versions come from pyproject.toml's pins. The base
# image is pinned by tag; pin it by digest for byte-identical rebuilds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> ...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed uid (used numerically by USER below) so files written to mounted volumes have a known owner.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin edgeface
WORKDIR /app

# ---- runtime: numpy, OpenCV, ONNX Runtime and LiteRT; edgeface verify / enroll / identify / profile ----
FROM base AS runtime
# EDGEFACE_MODEL: the pack (edgeface.runtime.pack) every runtime verb uses unless --model says otherwise;
# mount one there. Its detector comes with it, so no EDGEFACE_YUNET and no ../shared.
ENV EDGEFACE_MODEL=/pack
COPY pyproject.toml README.md ./
COPY edgeface/ edgeface/
COPY converters/ converters/
COPY runtime/ runtime/
# DL3013 wants `pkg==version`; this installs the local project, whose dependencies pyproject.toml pins.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[tflite]' \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
USER 10001:10001
ENTRYPOINT ["edgeface"]
CMD ["--help"]

# ---- full: the toolkit (compress, export, eval) with CPU-only torch ----
FROM base AS full
# EDGEFACE_YUNET: the face detector an export puts in its pack, found in ../shared mounted at /shared.
ENV EDGEFACE_YUNET=/shared/models/face_detection_yunet_2026may.onnx
# torch==2.13.0 is pinned in pyproject.toml; inside the image it comes from the PyTorch CPU wheel index,
# whose +cpu build satisfies that pin and leaves out the CUDA libraries the default index's wheel pulls in.
# (On the development machine the same version is preinstalled from a local wheel.)
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY edgeface/ edgeface/
COPY converters/ converters/
COPY runtime/ runtime/
# hadolint ignore=DL3013
RUN pip install --no-cache-dir '.[full]' \
    && mkdir -p /app/artifacts && chown 10001:10001 /app/artifacts
USER 10001:10001
ENTRYPOINT ["edgeface"]
# The README quick start, verbatim after `edgeface` (tests/test_deploy_dockerfile.py checks it).
CMD ["export", "--int8", "--model", "mobilefacenet", "--weights", "../shared/models/mobilefacenet_ms1m.pt", "--calib", "../shared/data/lfw", "-o", "artifacts/"]
