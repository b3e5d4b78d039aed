"""Alembic environment, driven from code (``lacuna db upgrade``): the engine is passed in
``config.attributes['engine']``; there is no alembic.ini."""

from __future__ import annotations

from alembic import context

from node.db.tables import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    context.run_migrations()
