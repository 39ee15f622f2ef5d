# dataslayer-relay: a slim image that runs `relay serve` as an unprivileged user.
#   docker build -t dataslayer-relay .
#   docker run -d --name relay -p 8080:8080 --stop-timeout 20 \
#     -e DATASLAYER_SECRET -v ./config.toml:/etc/relay/config.toml:ro \
#     -v relay-data:/var/lib/relay dataslayer-relay
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --home-dir /var/lib/relay \
       --shell /usr/sbin/nologin relay \
    && mkdir -p /etc/relay/templates /var/lib/relay \
    && chown relay:relay /var/lib/relay

WORKDIR /src
COPY pyproject.toml README.md ./
COPY relay ./relay
RUN pip install . && rm -rf /src

COPY deploy/config.docker.toml /etc/relay/config.toml

# The config (mount yours over it) and the database (a volume: it holds every acknowledged event).
ENV RELAY_CONFIG=/etc/relay/config.toml \
    RELAY_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz
VOLUME ["/var/lib/relay"]
WORKDIR /var/lib/relay
USER relay
EXPOSE 8080

HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(os.environ['RELAY_HEALTHCHECK_URL'], timeout=4)"]

# SIGTERM stops gracefully (sends in flight get [server].shutdown_timeout, 10 s by default, so give
# the container more with --stop-timeout); SIGHUP (docker kill -s HUP) reloads the config.
STOPSIGNAL SIGTERM
ENTRYPOINT ["relay"]
CMD ["serve"]
