"""TomeRetriever inside a minimal LCEL chain (no language model needed)."""
from tests.conftest import make_pdf


def test_tome_retriever_in_a_minimal_lcel_chain(tome_tiny, tmp_path):
    from langchain_core.documents import Document
    from langchain_core.runnables import RunnableLambda, RunnablePassthrough

    from tome_langchain import TomeRetriever

    a = tome_tiny.ingest(make_pdf(tmp_path / "a.pdf", ["Bread needs flour, water and salt.", "Bake it hot."],
                                  title="Baking")).document
    b = tome_tiny.ingest(make_pdf(tmp_path / "b.pdf", ["The moon has no air.", "Its gravity is one sixth of ours."],
                                  title="Moon")).document
    retriever = TomeRetriever(tome=tome_tiny, books=[a.id, b.id], k=2)

    docs = retriever.invoke("How strong is gravity on the moon?")
    assert docs and all(isinstance(d, Document) for d in docs)
    top = docs[0].metadata
    assert top["book"] == "Moon" and top["document_id"] == b.id and top["page_end"] == 2
    assert set(top) >= {"book", "pages", "page_start", "page_end", "score", "segment"}
    assert [d.metadata["score"] for d in docs] == sorted((d.metadata["score"] for d in docs), reverse=True)

    def cite(docs):
        return "\n".join(f"[{d.metadata['book']}, {d.metadata['pages']}] {d.page_content}" for d in docs)

    chain = {"context": retriever | RunnableLambda(cite), "question": RunnablePassthrough()} | RunnableLambda(
        lambda x: f"Context:\n{x['context']}\n\nQuestion: {x['question']}")
    prompt = chain.invoke("How strong is gravity on the moon?")
    assert prompt.startswith("Context:\n[Moon, pp. 1-2]") and "one sixth" in prompt
    assert TomeRetriever(tome=tome_tiny, k=1).invoke("bread flour")[0].metadata["book"] == "Baking"
