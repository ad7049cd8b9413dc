"""Alembic environment: the URL comes from etl's settings, the target from etl.db.tables."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from etl.db import engine as db_engine
from etl.db import grants, partitions
from etl.db.tables import metadata
from etl.settings import load_settings

config = context.config
if config.config_file_name is not None and not config.attributes.get("etl_quiet"):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def _url() -> str:
    url = config.attributes.get("etl_url")
    if url:
        return str(url)
    return db_engine.database_url(load_settings())


def _reader_role() -> str | None:
    # `etl migrate` passes its settings' reader_role; the alembic command reads the settings.
    if "etl_reader_role" in config.attributes:
        role = config.attributes["etl_reader_role"]
        return str(role) if role else None
    return load_settings().reader_role


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    # order_archive's partitions are made at run time (etl.db.partitions), not declared
    return not (type_ == "table" and name is not None and partitions.is_partition_name(name))


def run_migrations_offline() -> None:
    context.configure(
        url=db_engine.sqlalchemy_url(_url()),
        target_metadata=target_metadata,
        literal_binds=True,
        compare_type=True,
        include_name=include_name,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    import sqlalchemy as sa

    connectable = config.attributes.get("connection")
    if connectable is None:
        connectable = sa.create_engine(db_engine.sqlalchemy_url(_url()), poolclass=sa.NullPool)
    with connectable.connect() as connection:
        # One migration run at a time, whoever starts it (several workers may start together).
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7301001)")
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            compare_type=True,
            include_name=include_name,
        )
        # What the schema was once we hold the lock (etl migrate reports it).
        config.attributes["etl_before"] = context.get_context().get_current_revision()
        with context.begin_transaction():
            context.run_migrations()
            # Re-applied after every upgrade, in the same transaction: new views are covered.
            role = _reader_role()
            if role:
                grants.grant_reader(connection, role)
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
