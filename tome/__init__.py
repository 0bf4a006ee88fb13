"""Tome's service: configuration and the facade (``Tome``) that the UI and the CLI call.

Modules: ``config`` (settings, the one environment reader), ``models`` (base model, adapters, cache
policies), ``library`` (ingest / recover / re-ingest / delete), ``memories`` (make, store, load), ``queue`` (stage 2: the compression queue and its worker),
``answer`` (one context builder per mode), ``service`` (the facade), ``uploads``, ``lru``, ``timing``.
"""
from retrieval.citations import Source
from storage import NotFound
from tome.answer import MODES, AnswerUpdate
from tome.config import Config
from tome.library import IngestResult, Recovery
from tome.queue import MemoriesPending
from tome.service import Tome

__all__ = ["MODES", "AnswerUpdate", "Config", "IngestResult", "MemoriesPending", "NotFound", "Recovery", "Source", "Tome"]
