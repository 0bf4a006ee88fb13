"""passages: windows of <= 200 word pieces with their page and vector, full-text indexed

Revision ID: 0003
Revises: 0002

Documents stored before have no passages (documents.passage_embedder NULL);
retrieval.retriever.Retriever makes them on the first question that uses them.
Full text: an external-content FTS5 table kept in step by triggers on SQLite
(porter stemmer over unicode61 tokens); on PostgreSQL a stored generated
column tsv = to_tsvector('english', text) with a GIN index (BM25 is computed
from its lexeme positions, storage/store.py).
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

SQLITE_FTS = [
    "CREATE VIRTUAL TABLE passages_fts USING fts5(text, content='passages', content_rowid='id', "
    "tokenize='porter unicode61')",
    "CREATE TRIGGER passages_fts_ai AFTER INSERT ON passages BEGIN "
    "INSERT INTO passages_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER passages_fts_ad AFTER DELETE ON passages BEGIN "
    "INSERT INTO passages_fts(passages_fts, rowid, text) VALUES ('delete', old.id, old.text); END",
    "CREATE TRIGGER passages_fts_au AFTER UPDATE OF text ON passages BEGIN "
    "INSERT INTO passages_fts(passages_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO passages_fts(rowid, text) VALUES (new.id, new.text); END",
]
POSTGRES_FTS = [
    "ALTER TABLE passages ADD COLUMN tsv tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX ix_passages_tsv ON passages USING gin (tsv)",
]


def upgrade() -> None:
    op.create_table('passages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('document_id', sa.Integer(), nullable=False),
    sa.Column('idx', sa.Integer(), nullable=False),
    sa.Column('segment_idx', sa.Integer(), nullable=False),
    sa.Column('page', sa.Integer(), nullable=False),
    sa.Column('char_start', sa.Integer(), nullable=False),
    sa.Column('char_end', sa.Integer(), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('embedding', sa.LargeBinary(), nullable=True),
    sa.ForeignKeyConstraint(['document_id'], ['documents.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('document_id', 'idx')
    )
    with op.batch_alter_table('passages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_passages_document_id'), ['document_id'], unique=False)
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.add_column(sa.Column('passage_embedder', sa.String(length=200), nullable=True))
    dialect = op.get_bind().dialect.name
    for ddl in SQLITE_FTS if dialect == "sqlite" else POSTGRES_FTS if dialect == "postgresql" else []:
        op.execute(ddl)


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for t in ("passages_fts_ai", "passages_fts_ad", "passages_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {t}")
        op.execute("DROP TABLE IF EXISTS passages_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_passages_tsv")
        op.execute("ALTER TABLE passages DROP COLUMN IF EXISTS tsv")
    with op.batch_alter_table('documents', schema=None) as batch_op:
        batch_op.drop_column('passage_embedder')
    with op.batch_alter_table('passages', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_passages_document_id'))
    op.drop_table('passages')
