"""memory_sets.compressor, memory_sets.params: which compressor (and parameters, version) made the memories

Revision ID: 0004
Revises: 0003

Rows stored before were all made by the UIO encoder; their fingerprint stays the
adapter's, so they keep loading when that adapter is chosen, and `app.py gc`
removes them once no compressor in use makes them.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('memory_sets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('compressor', sa.String(length=32), nullable=False, server_default='uio'))
        batch_op.add_column(sa.Column('params', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('memory_sets', schema=None) as batch_op:
        batch_op.drop_column('params')
        batch_op.drop_column('compressor')
