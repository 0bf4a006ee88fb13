"""Tome as a LangChain retriever: ``TomeRetriever(tome=..., books=[...]) | ...`` in any LCEL chain.

It lives beside ``tome.py`` and depends only on the service facade
(``Tome.retrieve``): finding passages needs the embedder, the vector and
full-text search (storage) and the books' titles and pages, which only the
service wires together. Nothing in ``storage`` or ``uio`` knows about LangChain, and
importing this module loads no language model.

See docs/LANGCHAIN.md for an example.
"""
from __future__ import annotations

from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field


class TomeRetriever(BaseRetriever):
    """The ``k`` passages of the chosen books best matching the query, as ``Document``s, best first.

    A passage is a window of at most 200 word pieces on one page, ranked by
    meaning and exact words together (``retrieval.retriever``). ``metadata``:
    ``book`` (title), ``document_id``, ``page`` (the passage's page), ``page_start``
    and ``page_end`` (both that page), ``pages`` ("p. 3"), ``segment`` (index of the
    segment holding it), ``passage`` (its ordinal in the book), ``score`` (fused
    rank score, higher is better), ``vector`` (cosine) and ``lexical`` (full-text score;
    None when the query's words are not in it).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    tome: Any = Field(description="a tome.Tome service")
    books: list[int | str] = Field(default_factory=list,
                                   description="document ids or titles; empty: every ready book")
    k: int = Field(default=4, description="passages returned")

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun
                                ) -> list[Document]:
        books = self.books or [d.id for d in self.tome.documents() if d.ready]
        out = []
        for r in self.tome.retrieve(books, query, k=self.k):
            pages = f"p. {r.page_start}" if r.page_start == r.page_end else f"pp. {r.page_start}-{r.page_end}"
            out.append(Document(page_content=r.text, metadata={
                "book": r.title, "document_id": r.document_id, "page": r.page_start, "segment": r.index,
                "passage": r.passage, "page_start": r.page_start, "page_end": r.page_end, "pages": pages,
                "score": r.score, "vector": r.vector, "lexical": r.lexical}))
        return out
