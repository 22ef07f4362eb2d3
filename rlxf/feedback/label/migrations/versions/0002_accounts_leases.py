"""accounts can be disabled; items are leased to the labeller they are shown to; expired sessions purged

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02

* ``users.disabled``: a disabled account cannot log in and has no sessions (admin: PATCH /api/users/{id}).
* ``display_orders.leased_until``: the item counts towards its k labels for the labeller it was shown to
  until then (the queue's over-labelling bound, rlxf.feedback.label.app.queue_query); rows made before this
  revision hold no lease.
* ``ix_sessions_expires_at``: logins purge expired sessions by this column.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("display_orders", schema=None) as batch_op:
        batch_op.add_column(sa.Column("leased_until", sa.DateTime(), nullable=True))
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index("ix_sessions_expires_at", ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index("ix_sessions_expires_at")
    with op.batch_alter_table("display_orders", schema=None) as batch_op:
        batch_op.drop_column("leased_until")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("disabled")
