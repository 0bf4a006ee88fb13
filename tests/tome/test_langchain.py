"""TomeRetriever inside a minimal LCEL chain (no language model needed)."""
from tests.conftest import make_pdf


def test_tome_retriever_in_a_minimal_lcel_chain(tome_tiny, tmp_path):
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from tome.langchain import TomeRetriever

    a = tome_tiny.ingest(make_pdf(tmp_path / "a.pdf", ["Bread needs flour, water and salt.", "Bake it hot."],
                                  title="Baking")).document
    b = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", ["The moon has no air.", "Its gravity is one sixth of ours."],
                                  title="Moon")).document
    retriever = TomeRetriever(tome=tome_tiny, books=[a.id, b.id], k=2)

    docs = retriever.invoke("How strong is gravity on the moon?")
    assert docs and all(isinstance(d, Document) for d in docs)
    top = docs[0].metadata
    assert top["book"] == "Moon" and top["document_id"] == b.id and top["page"] == top["page_start"] == top["page_end"]
    assert set(top) >= {"book", "page", "pages", "page_start", "page_end", "score", "segment", "passage"}
    # passages, each with its own page, not the whole segment (pp. 1-2) they share
    assert {(d.metadata["page"], d.page_content) for d in docs} == {
        (1, "The moon has no air."), (2, "Its gravity is one sixth of ours.")}
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)

    def cite(docs):
        return "\n".join(f"[{d.metadata['book']}, {d.metadata['pages']}] {d.page_content}" for d in docs)

    chain = {"context": retriever | RunnableLambda(cite), "question": RunnablePassthrough()} | RunnableLambda(
        lambda x: f"Context:\n{x['context']}\n\nQuestion: {x['question']}")
    prompt = chain.invoke("How strong is gravity on the moon?")
    assert prompt.startswith("Context:\n[Moon, p. ") and "one sixth" in prompt and "[Moon, p. 2]" in prompt
    assert TomeRetriever(tome=tome_tiny, k=1).invoke("bread flour")[0].metadata["book"] == "Baking"
