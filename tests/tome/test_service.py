"""The Tome service with a tiny random model: the flows are real, the answers gibberish."""
import pytest

from tests.conftest import make_pdf


def test_ingest_and_ask_records_conversation_and_sources(tome_tiny, tmp_path):
    pdf = make_pdf(tmp_path / "b.pdf", ["First page about tides.", "Second page about gulls."])
    r = tome_tiny.ingest(pdf)
    assert r.ok and r.document.pages == 2 and r.document.tokens > 5
    updates = list(tome_tiny.ask([r.document.id], "What about gulls?", max_new_tokens=5))
    final = updates[-1]
    assert final.done and not any(u.done for u in updates[:-1])
    assert final.stats["new_tokens"] >= 1 and final.stats["prompt_tokens"] > final.context_tokens
    assert [(s.page_start, s.page_end) for s in final.sources] == [(2, 2)]  # the matching passage's page
    msgs = tome_tiny.store.messages(final.conversation_id)
    assert [m.role for m in msgs] == ["user", "assistant"]
    assert msgs[0].content == "What about gulls?" and msgs[1].mode == "uncompressed"
    cited = msgs[1].stats["sources"]
    assert [c["label"] for c in cited] == ["b, p. 2"]
    assert cited[0]["document_id"] == r.document.id and "gulls" in cited[0]["snippet"]
    assert isinstance(cited[0]["score"], float)


def test_long_book_is_cut_to_the_budget_around_the_closest_segments(tome_tiny, tmp_path):
    pages = [f"Page {i}. " + "The tide came in over the rocks and went out again. " * 40 for i in range(12)]
    pages[9] = "Page 9. The lighthouse keeper kept a tame falcon called Ossian. " * 12 + pages[9]
    r = tome_tiny.ingest(make_pdf(tmp_path / "long.pdf", pages))
    assert r.document.tokens > tome_tiny.config.context_budget
    final = list(tome_tiny.ask([r.document.id], "What was the keeper's falcon called?", max_new_tokens=3))[-1]
    assert final.truncated == [r.document.title]
    assert 0 < final.context_tokens <= tome_tiny.config.context_budget
    # the best-ranked citation is the falcon page, although it lies past the leading segments
    assert final.sources[0].page_start <= 10 <= final.sources[0].page_end
    assert "falcon" in final.sources[0].snippet


def test_empty_question_and_unknown_book_are_refused(tome_tiny):
    from storage import NotFound

    with pytest.raises(ValueError, match="empty"):
        list(tome_tiny.ask([], "   "))
    with pytest.raises(NotFound):
        list(tome_tiny.ask([999], "Anything?"))


def test_config_reads_environment_in_one_place(tmp_path):
    from tome import Config

    cfg = Config.from_env({"TOME_DATA_DIR": str(tmp_path), "TOME_MODEL": "smollm2",
                           "TOME_CONTEXT_BUDGET": "2048", "TOME_TUNE_MALLOC": "0"})
    assert cfg.model == "smollm2" and cfg.context_budget == 2048 and cfg.tune_malloc is False
    assert cfg.db == f"sqlite:///{(tmp_path / 'tome.sqlite').resolve()}"
    assert Config.from_env({}, model="x").model == "x"
    assert Config.from_env({"TOME_DB_URL": "postgresql://h/db"}).db == "postgresql://h/db"
