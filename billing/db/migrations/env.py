"""Alembic environment: runs migrations on the engine that billing.db.migrate passes in."""

from __future__ import annotations

from alembic import context

from billing.db.models import Base

engine = context.config.attributes["engine"]
with engine.connect() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
