# openmail-bridge as a container sidecar: slim, non-root, state on a volume.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY bridge ./bridge
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
LABEL org.opencontainers.image.title="openmail-bridge" \
      org.opencontainers.image.description="OpenMail events, de-duplicated, durable, routed to your agent"
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/openmail-bridge \
        --shell /usr/sbin/nologin bridge \
    && mkdir -p /var/lib/openmail-bridge /etc/openmail-bridge \
    && chown bridge:bridge /var/lib/openmail-bridge \
    && chmod 0700 /var/lib/openmail-bridge
COPY deploy/container.yaml /etc/openmail-bridge/config.yaml
# ADMIN_LISTEN is where the default config's admin server listens and where the HEALTHCHECK asks:
# set it (not admin.listen) to move the admin server, or set both with a config of your own.
ENV OPENMAIL_BRIDGE_CONFIG=/etc/openmail-bridge/config.yaml \
    STATE_DIRECTORY=/var/lib/openmail-bridge \
    ADMIN_LISTEN=0.0.0.0:9464 \
    PYTHONUNBUFFERED=1
USER 10001:10001
VOLUME ["/var/lib/openmail-bridge"]
EXPOSE 8080 9464
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; host, _, port = os.environ['ADMIN_LISTEN'].rpartition(':'); host = {'0.0.0.0': '127.0.0.1', '[::]': '[::1]', '': '127.0.0.1'}.get(host, host); urllib.request.urlopen(f'http://{host}:{port}/healthz', timeout=4)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["openmail-bridge"]
CMD ["run"]
