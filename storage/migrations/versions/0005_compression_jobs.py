"""compression_jobs: the persisted queue of stage 2 (memories made in the background)

Revision ID: 0005
Revises: 0004

A book is ready (askable uncompressed) once its text, segments, passages and
vectors are stored; its memories are made afterwards by a worker that claims
rows of this table (storage/jobs.py). Documents stored before already have
their memories (or were stored without), so no rows are made for them.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('compression_jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('document_id', sa.Integer(), nullable=False),
    sa.Column('compressor', sa.String(length=32), nullable=False),
    sa.Column('ratio', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('segments_done', sa.Integer(), nullable=False),
    sa.Column('segments_total', sa.Integer(), nullable=False),
    sa.Column('done_at_claim', sa.Integer(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('document_id', 'compressor', 'ratio')
    )
    with op.batch_alter_table('compression_jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_compression_jobs_document_id'), ['document_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_compression_jobs_status'), ['status'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('compression_jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_compression_jobs_status'))
        batch_op.drop_index(batch_op.f('ix_compression_jobs_document_id'))
    op.drop_table('compression_jobs')
