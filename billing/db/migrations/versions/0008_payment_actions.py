"""payments awaiting the customer (client secret, confirmation link); refunds keep their reason and actor

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01

- payments.client_secret: the PaymentIntent's client secret of an attempt in requires_action, encrypted at rest
  (billing.crypto: sized for the ciphertext of 255 characters); payments.action_url: the page where the customer
  confirms it (PayPal's payer-action link, Stripe's redirect, or AIHUB_PAYMENT_ACTION_URL).
- refunds.reason, refunds.actor: a refund whose answer was lost is completed by the payments round later, with
  the credit note the admin asked for.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from billing.crypto import stored_length

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payments") as batch:
        batch.add_column(sa.Column("client_secret", sa.String(stored_length(255)), nullable=True))
        batch.add_column(sa.Column("action_url", sa.String(2000), nullable=True))
    with op.batch_alter_table("refunds") as batch:
        batch.add_column(sa.Column("reason", sa.String(300), nullable=True))
        batch.add_column(sa.Column("actor", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("refunds") as batch:
        batch.drop_column("actor")
        batch.drop_column("reason")
    with op.batch_alter_table("payments") as batch:
        batch.drop_column("action_url")
        batch.drop_column("client_secret")
