"""secrets encrypted at rest: webhook signing secrets and provider customer ids (billing.crypto)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Widens the columns to hold `enc:v1:<Fernet token>` values and encrypts the values already stored (with the keys
of AIHUB_SECRET_KEYS, or the embedded default's key file).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from billing.crypto import encrypt, is_encrypted, stored_length

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

COLUMNS = (("notification_settings", "account_id", "webhook_secret", 128, 128),
           ("payment_customers", "account_id", "customer_id", 255, 255),
           ("payment_methods", "id", "provider_customer_id", 255, 255))


def upgrade() -> None:
    bind = op.get_bind()
    for table, key, column, plain, _ in COLUMNS:
        with op.batch_alter_table(table) as batch:
            batch.alter_column(column, type_=sa.String(stored_length(plain)), existing_type=sa.String(plain))
        rows = bind.execute(sa.text(f"SELECT {key}, {column} FROM {table} WHERE {column} IS NOT NULL")).all()
        for row_key, value in rows:
            if not is_encrypted(value):
                bind.execute(sa.text(f"UPDATE {table} SET {column} = :v WHERE {key} = :k"),
                             {"v": encrypt(value), "k": row_key})


def downgrade() -> None:
    raise NotImplementedError("decrypting secrets back into clear text is not offered; restore a backup instead")
