"""Alembic environment: runs on the connection the ledger passes in config.attributes."""

from alembic import context

from jupyter_gpu_meter.ledger.models import metadata

config = context.config


def run(connection):
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things: copy-and-move tables instead
        render_as_batch=connection.dialect.name == "sqlite",
        # the ledger's SQLite connections begin real transactions: DDL is transactional there too
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    run(connection)
else:
    from jupyter_gpu_meter.ledger.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    try:
        with engine.begin() as connection:
            run(connection)
    finally:
        engine.dispose()
