# The etl image: the built wheel (migrations inside), installed non-editable, run as a non-root
# user. Configure it with ETL_* variables; `etl worker` serves Prometheus metrics on 9108.

# --- build: turn the source into a wheel
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml setup.py MANIFEST.in README.md alembic.ini ./
COPY etl ./etl
COPY migrations ./migrations
RUN pip wheel --no-deps --wheel-dir /dist .

# --- runtime: only the installed wheel and its dependencies
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 ETL_DATA_DIR=/home/etl/data
COPY --from=build /dist/ /tmp/dist/
RUN pip install /tmp/dist/*.whl && rm -rf /tmp/dist \
    && useradd --system --uid 10001 --create-home --home-dir /home/etl etl
USER 10001:10001
WORKDIR /home/etl

EXPOSE 9108
# The worker answers on its metrics port while it runs (`etl migrate` and one-off commands
# override CMD and are not health-checked by compose).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9108/metrics', timeout=4)"]

ENTRYPOINT ["etl"]
CMD ["worker", "--metrics-port", "9108"]
