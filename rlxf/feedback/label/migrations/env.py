"""Alembic's environment for the labelling app: migrates the connection that
:func:`rlxf.feedback.label.db.init_db` hands over in ``config.attributes["connection"]`` (no ini file,
no URL here). Offline (SQL script) mode is left out."""

from alembic import context

from rlxf.feedback.label.db import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run the labelling app's migrations through rlxf.feedback.label.db.init_db(engine)")
# render_as_batch: SQLite cannot ALTER most things in place; batch mode copies the table instead.
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
