# syntax=docker/dockerfile:1
#
# meshdns container image.
#
#   docker build -t meshdns:0.1.0 .
#   docker run --rm -p 8600:8600/udp -p 8600:8600/tcp \
#     -v "$PWD/zones:/etc/meshdns/zones:ro" meshdns:0.1.0
#   dig @127.0.0.1 -p 8600 legacy-billing.service.consul SRV
#
# Stage 1 builds wheels for meshdns and its dependencies; the final stage
# installs them from a bind mount, so no compiler, source tree or wheel file
# ends up in the image. The server runs as uid 10001 and listens on:
#   8600/udp, 8600/tcp  DNS, on every address (deploy/docker/meshdns.toml)
#   8500/tcp            HTTP API, on the container's loopback by default: the
#                       API refuses other addresses unless ACL tokens are
#                       configured (or --http-insecure is given). Mount a config
#                       with [[acl.tokens]] to publish it.
# Registrations are stored in the /var/lib/meshdns volume. /etc/meshdns/zones
# is empty: mount your zone files there (the repository's zones/ is a demo).

FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshdns ./meshdns
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    HEALTHCHECK_URL=http://127.0.0.1:8500/healthz
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links=/wheels /wheels/meshdns-*.whl \
    && groupadd --system --gid 10001 meshdns \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
       --home-dir /var/lib/meshdns --shell /usr/sbin/nologin meshdns \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/meshdns \
    && install -d -m 0755 /etc/meshdns/zones
COPY deploy/docker/meshdns.toml /etc/meshdns/meshdns.toml
USER 10001:10001
WORKDIR /var/lib/meshdns
VOLUME ["/var/lib/meshdns"]
EXPOSE 8600/udp 8600/tcp 8500/tcp
# slim images have no curl: the check is a one-line Python HTTP GET (exit 1 on
# any error or non-2xx answer). Set HEALTHCHECK_URL if you move the API.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['HEALTHCHECK_URL'], timeout=3)"]
ENTRYPOINT ["meshdns", "serve"]
CMD ["--config", "/etc/meshdns/meshdns.toml"]
