# capirelay gateway image: `capirelay serve` on 0.0.0.0:8080 as an unprivileged user.
# Settings: mount capirelay.toml at /etc/capirelay/capirelay.toml (see examples/deploy)
# and pass secrets (CAPIRELAY_STORAGE, access tokens, ingest keys) as environment variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --system --create-home --home-dir /var/lib/capirelay --uid 10001 capirelay

WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . && rm -rf /src

USER capirelay
WORKDIR /var/lib/capirelay
EXPOSE 8080

# Ready = storage answers and delivery runs; slim has no curl, so Python asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=2).status != 200)"]

ENTRYPOINT ["capirelay"]
CMD ["serve", "--config", "/etc/capirelay/capirelay.toml", "--host", "0.0.0.0", "--port", "8080"]
