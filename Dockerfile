# One image per service, from this one Dockerfile: `--build-arg SERVICE=identity` (audit, identity,
# records, sync, gateway, national_emulator). Build context: the repository root.
#   docker build --build-arg SERVICE=identity -t emr-identity .
# Here (no registry access) `make images` passes BASE_IMAGE=localhost/emr-base:bookworm, a Debian
# bookworm made with debootstrap (deploy/images/base-image.sh). Both bases carry Python 3.11.
ARG BASE_IMAGE=docker.io/library/python:3.11-slim-bookworm

# --- build: resolve the service's locked dependencies into /opt/venv with uv -----------------------
FROM ${BASE_IMAGE} AS build
ARG SERVICE
ARG UV_VERSION=0.13.9
# The build stage trusts the system CA bundle (a TLS-inspecting proxy may sit in front of PyPI);
# nothing of this stage but /opt/venv reaches the final image.
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    UV_NATIVE_TLS=1 UV_PYTHON_DOWNLOADS=never UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_CACHE_DIR=/uv-cache PIP_DISABLE_PIP_VERSION_CHECK=1
RUN test -n "$SERVICE" || { echo "--build-arg SERVICE=<service> is required" >&2; exit 1; }
RUN python3 -m venv /opt/uv && /opt/uv/bin/pip install --cache-dir /uv-cache/pip --quiet "uv==${UV_VERSION}"
WORKDIR /src
# Third-party dependencies first, from the lock and the workspace members' metadata only: this layer
# is reused until the lock changes (uv needs every member's pyproject.toml to read the workspace).
# Wheels come from the uv cache (a build volume in `make images`) when it has them.
COPY pyproject.toml uv.lock ./
COPY services/contracts/pyproject.toml services/contracts/
COPY services/runtime/pyproject.toml services/runtime/
COPY services/claims/pyproject.toml services/claims/
COPY services/fhir/pyproject.toml services/fhir/
COPY services/identity/pyproject.toml services/identity/
COPY services/records/pyproject.toml services/records/
COPY services/audit/pyproject.toml services/audit/
COPY services/sync/pyproject.toml services/sync/
COPY services/gateway/pyproject.toml services/gateway/
COPY services/national_emulator/pyproject.toml services/national_emulator/
COPY services/devstack/pyproject.toml services/devstack/
RUN /opt/uv/bin/uv sync --frozen --no-dev --package "emr-$(echo "$SERVICE" | tr _ -)" \
      --no-install-workspace --python python3 --quiet
# Then our own packages (uv would compile the whole venv again; only ours are new).
COPY services/ services/
RUN UV_COMPILE_BYTECODE=0 /opt/uv/bin/uv sync --frozen --no-dev --package "emr-$(echo "$SERVICE" | tr _ -)" \
      --no-editable --python python3 --quiet \
 && /opt/venv/bin/python -m compileall -q /opt/venv/lib/python3*/site-packages/emr* \
 && printf '#!/bin/sh\nexec /opt/venv/bin/python -m emr_%s "$@"\n' "$SERVICE" > /opt/venv/bin/emr-service \
 && chmod 0755 /opt/venv/bin/emr-service
# The health checker of `helm test` and skaffold verify.
COPY --chmod=0755 deploy/images/emr_healthcheck.py /opt/venv/bin/emr-healthcheck
RUN sed -i '1i #!/opt/venv/bin/python' /opt/venv/bin/emr-healthcheck

# --- run: the base image, the venv, a non-root user; no compilers, no uv, no sources --------------
FROM ${BASE_IMAGE}
ARG SERVICE
LABEL org.opencontainers.image.title="emr-${SERVICE}" \
      org.opencontainers.image.description="EMR exchange platform: ${SERVICE}"
RUN useradd --uid 10001 --user-group --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin emr
COPY --from=build /opt/venv /opt/venv
# Bytecode is compiled at build time; the root filesystem can be read-only.
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 EMR_SERVICE=${SERVICE}
USER 10001:10001
ENTRYPOINT ["/opt/venv/bin/emr-service"]
