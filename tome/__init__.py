"""Tome's service: configuration and the facade (``Tome``) that the UI and the CLI call."""
from tome.service import *  # noqa: F401,F403  (split into modules in the next commit)
from tome.service import ADAPTERS_DIR, CACHE_POLICIES, MODES, AnswerUpdate, Config, IngestResult, Source, Tome  # noqa: F401
