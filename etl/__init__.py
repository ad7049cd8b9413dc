"""etl: sync Taobao Open Platform new-retail orders into PostgreSQL."""

__version__ = "0.1.0"
