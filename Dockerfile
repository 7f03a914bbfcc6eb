# One image for every fdpush process; the command picks the role:
#   serve (the API)  ·  worker (delivery)  ·  migrate (schema upgrade)
#   gateway --config FILE (the Push Gateway, docs/gateway.md; an app vendor runs it)
# Build: docker build -t fdpush .      Run: docker run fdpush serve      (docs/operations.md)
#
# tests/deploy/test_image.py runs this file's build-stage RUN steps and the final stage's ENV and
# ENTRYPOINT in a fresh virtualenv, so the image's install and start cannot drift from the code.

FROM python:3.11.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# A self-contained virtualenv, copied whole into the final stage: no compiler, no pip cache there.
RUN python -m venv /opt/fdpush \
    && /opt/fdpush/bin/pip install --no-cache-dir . \
    && /opt/fdpush/bin/fdpush --version

FROM python:3.11.11-slim-bookworm
LABEL org.opencontainers.image.title="fdpush" \
      org.opencontainers.image.description="Push notifications for Fachdienste" \
      org.opencontainers.image.licenses="Apache-2.0"
# A fixed numeric user, so Kubernetes' runAsNonRoot can check it without a name lookup.
RUN groupadd --system --gid 10001 fdpush \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/fdpush --create-home \
       --shell /usr/sbin/nologin fdpush \
    && chmod 700 /var/lib/fdpush \
    && install -d -m 700 -o 10001 -g 10001 /var/lib/fdpush/state
COPY --from=build /opt/fdpush /opt/fdpush
ENV PATH=/opt/fdpush/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FDPUSH_HOST=0.0.0.0
USER 10001:10001
WORKDIR /var/lib/fdpush
# 8080: client API (and /metrics, /health/*); 8081: internal API when FDPUSH_INTERNAL_PORT=8081;
# 9101: a worker's /metrics and /health/* (FDPUSH_WORKER_METRICS_PORT); 8443: the Push Gateway
# (HTTPS; its /metrics and /health/* too). /var/lib/fdpush/state: the gateway's rejection memory
# file, when its configuration names one there (a volume keeps it across restarts).
EXPOSE 8080 8081 8443 9101
ENTRYPOINT ["fdpush"]
CMD ["serve"]
