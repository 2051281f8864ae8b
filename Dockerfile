# One image for the geventchat server, its client and Locust (master and workers): see docker-compose.yml.
# The build stage installs into a virtualenv; the final stage copies only that virtualenv, so no compiler, pip
# cache or build files end up in the image (gevent, greenlet and Locust's dependencies install from wheels).
# Prometheus metrics are part of the core install; the loadtest extra adds Locust.
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
# LICENSE: pyproject.toml names it in license-files, and the build fails without it.
COPY pyproject.toml README.md LICENSE ./
COPY geventchat ./geventchat
RUN python -m venv /opt/venv && /opt/venv/bin/pip install ".[loadtest]"

FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin chat
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY loadtest ./loadtest
USER chat
# 8888: the chat server; 8089: Locust's web UI; 5557: Locust master <-> workers.
EXPOSE 8888 8089 5557
# Healthy when the server on this container greets. The check sends 'PROXY UNKNOWN' first, so it also works
# against --proxy-protocol; a server without the flag just answers it with an error line after the greeting.
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-m", "geventchat.healthcheck", "127.0.0.1", "8888"]
CMD ["geventchat", "serve", "--host", "0.0.0.0", "--port", "8888"]
