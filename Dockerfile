# syntax=docker/dockerfile:1
# One image for both workloads of the Helm chart (helm/audiochat):
#   audiochat serve --role core    the gRPC service (+ metrics)
#   audiochat serve --role edge    the HTTP edge (SSE, WebSocket, OpenAI-compatible), talking to the core
#   audiochat serve                both in one process (the default command)
# Build: docker build -t audiochat:$(grep -m1 '^version' pyproject.toml | cut -d'"' -f2) .

# Both stages must use the same base: the virtualenv links to its Python by path.
# For byte-identical rebuilds pin a digest: --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:...
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# uv installs uv.lock into /opt/venv, hashes checked: the very versions `make test` tests. Same uv as the
# Makefile's UV_VERSION; the image's own Python, never a downloaded one; bytecode compiled now because
# the root filesystem is read-only at run time.
ARG UV_VERSION=0.13.9
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_NO_CACHE=1
RUN python -m pip install uv==${UV_VERSION}
WORKDIR /src
# Dependencies first, so this layer is rebuilt only when the lock changes. --locked fails the build if
# uv.lock and pyproject.toml disagree; --no-build: wheels only, so no compiler is ever needed.
COPY pyproject.toml uv.lock ./
RUN uv sync --locked --no-install-project --no-build
# Then the application, as a regular (not editable) install of its wheel; `uv pip check` fails the
# build if an installed package lacks a dependency.
COPY README.md ./
COPY gen/ gen/
COPY service/ service/
COPY adapters/ adapters/
RUN uv sync --locked --no-editable \
 && uv pip check --python /opt/venv/bin/python

FROM ${PYTHON_IMAGE} AS runtime
# The installers of the base image are not needed at run time; the user matches the chart's runAsUser.
RUN python -m pip uninstall --yes --root-user-action=ignore pip setuptools wheel \
 && groupadd --gid 10001 audiochat \
 && useradd --uid 10001 --gid audiochat --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin audiochat
COPY --from=build /opt/venv /opt/venv
# The root filesystem may be read-only (it is in the chart): bytecode was compiled at install time,
# and the application writes only to /tmp.
# audiochat binds loopback by default; a container listens on its own interface to be reachable at all.
ENV PATH=/opt/venv/bin:$PATH \
    AUDIOCHAT_BIND=0.0.0.0 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
# gRPC, core metrics, edge HTTP.
EXPOSE 50051 9090 8080
# Exec form: audiochat is PID 1 and receives SIGTERM itself; it installs its own handler (PID 1 gets no
# default signal actions) and drains open streams for AUDIOCHAT_DRAIN_SECONDS before exiting.
ENTRYPOINT ["audiochat"]
CMD ["serve"]
