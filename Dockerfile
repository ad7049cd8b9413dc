# The etl image: the package plus its migrations. Configure it with ETL_* variables.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md alembic.ini ./
COPY etl ./etl
COPY migrations ./migrations
COPY config ./config
RUN pip install -e . && useradd --system --home /app etl
USER etl

ENTRYPOINT ["etl"]
CMD ["worker"]
