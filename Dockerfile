# syntax=docker/dockerfile:1
# The image of the GC and audit CronJobs (terraform-example/kubernetes): the objstore-backend
# command with the S3 and GCS filesystems, and no Airflow. From the repository's top level:
#
#   docker build -t <registry>/objstore-backend:<version> .
#
# It runs as the CronJobs run it: UID 65532, a read-only root filesystem, HOME=/tmp and only
# /tmp writable. tests/test_image.py runs this file's install command and the CronJobs'
# command lines that way (hadolint lints it there too).
#
# The base is the multi-platform index of python:3.11-slim-bookworm, pinned by digest. To take
# a newer one, read the index digest and replace the one below:
#   docker buildx imagetools inspect python:3.11-slim-bookworm --format '{{json .Manifest.Digest}}'
ARG PYTHON_BASE=python:3.11-slim-bookworm@sha256:0bee7276f83efd4a1ee05bbbf4281d95ed28e079220a9457f25a93e3f1e3c31b

FROM ${PYTHON_BASE} AS builder
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY objstore_backend/ objstore_backend/
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM ${PYTHON_BASE}
# The package's extras to install, comma-separated: one per store the image may sweep (drop the
# ones you do not use for a smaller image, e.g. --build-arg EXTRAS=s3); metrics: OpenTelemetry
# export when [metrics] otel_on is set (StatsD needs no extra).
ARG EXTRAS=s3,gcs,azure,metrics
# The wheel and the dependency pins are mounted, not copied: neither stays in a layer. The
# pins are constraints-dev.txt, the versions the test suite runs against. --only-binary: every
# dependency comes as a wheel, so nothing is compiled and the image has no compiler. The venv
# has no pip of its own; the base image's pip installs into it.
RUN --mount=type=bind,from=builder,source=/dist,target=/dist \
    --mount=type=bind,source=constraints-dev.txt,target=/constraints.txt \
    python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --root-user-action=ignore --only-binary=:all: \
        --constraint /constraints.txt "$(echo /dist/objstore_backend-*.whl)[${EXTRAS}]"
# pip compiled every module above, so a read-only root filesystem costs no start-up time, and
# Python never tries to write one at run time. HOME: botocore and gcsfs look for their
# configuration there; /tmp is the one writable place in the pod.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
WORKDIR /tmp
USER 65532:65532
ENTRYPOINT ["objstore-backend"]
CMD ["--help"]
