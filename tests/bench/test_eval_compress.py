"""bench/eval_compress.py's cells on a tiny Tome: a compressor variant makes that compressor's memories."""
from tests.conftest import make_pdf

PAGES = [f"Page {i}. " + "The keeper lit the lamp at dusk and the ships passed the point. " * 10 for i in range(1, 5)]


def test_a_ppl_cell_with_a_compressor_variant_reads_that_compressors_memories(tome_tiny, tmp_path):
    from bench.eval_compress import next_segment_nll, parse_method

    assert parse_method("kvzip-fast@32/share16") == ("kvzip-fast", 32, "share16")
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    shared = next_segment_nll(tome_tiny, doc, "kvzip@8/share2", prev=2, target=16)
    plain = next_segment_nll(tome_tiny, doc, "kvzip@8", prev=2, target=16)  # the fixture's: memory_share=1
    made = {m.params.get("share", 1) for m in tome_tiny.memory_sets(doc.id) if m.compressor == "kvzip"}
    assert made == {1, 2}  # "/share2" made its own memories, not a positions option
    assert len(shared) == len(plain) > 2 and all(n == 15 for _, n, _ in shared)  # 16 tokens, 15 predicted
    assert [round(nll, 4) for nll, _, _ in shared] != [round(nll, 4) for nll, _, _ in plain]
    assert tome_tiny.models.compressor(8, "kvzip").share == 1  # the override ended with the cell


def test_an_excerpt_cell_asks_with_that_text_beside_the_memories(tome_tiny, tmp_path):
    """"/p1": each book's best page whole, "/x1": the best passage, "/p1nomem": the page and no memory slot,
    "/x1bM": the passage and at most M slots; the product's config is back after each cell."""
    from bench.eval_compress import EXCERPT_CELL, ask

    assert EXCERPT_CELL.fullmatch("pool5") is None and EXCERPT_CELL.fullmatch("share16") is None
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    base = tome_tiny.config
    rows = {v: ask(tome_tiny, [doc], "Who lit the lamp?", f"kvzip@8/{v}", 2) for v in ("x1", "p1", "p1nomem", "x0")}
    assert tome_tiny.config == base
    assert rows["p1"]["prompt_tokens"] > rows["x1"]["prompt_tokens"] > rows["x0"]["prompt_tokens"]
    assert rows["p1nomem"]["prompt_tokens"] == rows["p1"]["prompt_tokens"]
    assert rows["p1nomem"]["prefix_len"] == 0 < rows["p1"]["prefix_len"] == rows["x0"]["prefix_len"]
    cap = rows["x0"]["prefix_len"] - 1
    capped = ask(tome_tiny, [doc], "Who lit the lamp?", f"kvzip@8/x1b{cap}", 2)
    assert tome_tiny.config == base
    assert 0 < capped["prefix_len"] <= cap and capped["prompt_tokens"] == rows["x1"]["prompt_tokens"]


def test_set_takes_only_the_products_variables_and_parses_them(monkeypatch):
    import pytest

    import bench.eval_compress as ev
    from tome.config import Config

    with pytest.raises(SystemExit):
        ev.main(["report", "--set", "TOME_NOT_A_SETTING=1"])
    with pytest.raises(SystemExit):
        ev.main(["report", "--set", "TOME_MEMORY_EXCERPT_PLACE"])  # no value
    monkeypatch.setattr(ev, "SETTINGS", {"TOME_MEMORY_EXCERPT_PLACE": "user", "TOME_MEMORY_SKIP_EXCERPTED": "1"})
    cfg = Config.from_env(env=ev.SETTINGS)  # what make_tome starts from
    assert (cfg.memory_excerpt_place, cfg.memory_skip_excerpted) == ("user", True)


def test_resume_keeps_an_interrupted_cells_answers_and_asks_the_rest(tome_tiny, tmp_path, monkeypatch):
    import pytest

    import bench.eval_compress as ev

    monkeypatch.setattr(ev, "RESULTS_DIR", tmp_path)
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    items = [([doc], f"Question {i}: who lit the lamp?", {"id": f"q{i}"}) for i in range(3)]
    asked = []

    def stop_at_third(text, meta):
        if len(asked) == 2:
            raise KeyboardInterrupt  # the run is stopped while the third question is graded
        asked.append(meta["id"])
        return meta["id"] == "q0"

    data = ev.load_part("qwen", "realdocs")
    with pytest.raises(KeyboardInterrupt):
        ev.run_cell(tome_tiny, data, "k", "retrieval", items, stop_at_third, 2, "qwen", "realdocs")
    partial = ev.load_part("qwen", "realdocs")["partial"]["k"]
    assert [r["id"] for r in partial["rows"]] == ["q0", "q1"] and partial["n_planned"] == 3

    monkeypatch.setattr(ev, "RESUME", True)
    data = ev.load_part("qwen", "realdocs")
    ev.run_cell(tome_tiny, data, "k", "retrieval", items, lambda text, meta: asked.append(meta["id"]) or True, 2,
                "qwen", "realdocs")
    done = ev.load_part("qwen", "realdocs")
    assert asked == ["q0", "q1", "q2"]  # only the third was asked again
    assert [r["id"] for r in done["cells"]["k"]["rows"]] == ["q0", "q1", "q2"] and "k" not in done["partial"]
    assert [r["correct"] for r in done["cells"]["k"]["rows"]] == [True, False, True]


def test_a_gold_cell_answers_from_the_gold_page_alone(tome_tiny, tmp_path, monkeypatch):
    """"gold": uncompressed mode over the question's gold page, whole, and nothing else; the answerer's own
    choice is back after the cell."""
    import pytest

    import bench.qa.realdocs as realdocs
    from bench.eval_compress import ask

    pdf = make_pdf(tmp_path / "lamp.pdf", PAGES)
    doc = tome_tiny.ingest(pdf).document
    monkeypatch.setattr(realdocs, "documents", lambda data=None: {"lamp": {"path": str(pdf)}})
    q = {"id": "lamp-1", "docs": ["lamp"], "gold": [{"doc": "lamp", "page": 3}]}
    gold = ask(tome_tiny, [doc], "Who lit the lamp?", "gold", 2, q)
    assert gold["pages"] == [3]
    page = len(tome_tiny.lm.tokenizer(PAGES[2])["input_ids"])
    retrieval = ask(tome_tiny, [doc], "Who lit the lamp?", "retrieval", 2, q)
    assert "choose" not in vars(tome_tiny.answerer)  # the class's method again
    assert retrieval["pages"] != [3] and retrieval["prompt_tokens"] > gold["prompt_tokens"] >= page
    with pytest.raises(ValueError, match="gold pages"):
        ask(tome_tiny, [doc], "Who lit the lamp?", "gold", 2, {"id": "x"})
