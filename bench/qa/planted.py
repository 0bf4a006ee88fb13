"""Generated books with planted facts, for compression and retrieval QA.

    from bench.qa import planted
    data = planted.make_books("/tmp/planted", seed=0, pages=40)   # writes PDFs + planted.json
    python bench/qa/planted.py /tmp/planted --seed 0 --pages 40   # same, from the shell

Each book is a real PDF (fpdf2, core Helvetica) of generated filler prose: varied sentences
from a fixed grammar and word lists, with no digits and no capitalised names, so a planted fact
("The keeper of the north tower is named Alder Voss.") is the only place its answer occurs.
Every fact sits on a known page; the returned dict has the schema of realdocs.json (documents,
questions with answers, gold pages, kind, style; two-book questions carry answer_parts).

Everything follows from ``seed``: the same arguments give byte-identical PDFs (fixed creation
date) with the same fpdf2 version. Subjects (towers, ships, villages ...) and answers are drawn
without replacement across all books, so no question needs the book's title to be answered.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.qa.grading import grade as _grade

FIXED_DATE = _dt.datetime(2024, 1, 1, tzinfo=_dt.timezone.utc)

# -- filler prose -----------------------------------------------------------------------------------
# Lower-case common words only (no digits, no proper names), so planted answers cannot collide.

_NOUNS = ("river", "meadow", "orchard", "road", "harbour", "forest", "valley", "market", "kitchen",
          "garden", "winter", "summer", "morning", "evening", "letter", "journey", "window", "hill",
          "field", "well", "stone", "cart", "mill", "bell", "rain", "wind", "fire", "lamp", "table",
          "bread", "song", "story", "path", "gate", "roof", "cloud", "shadow", "harvest", "bridge",
          "boat", "wall", "door", "cellar", "stair", "courtyard", "chapel", "fountain", "hedge")
_ADJS = ("quiet", "old", "narrow", "bright", "distant", "cold", "warm", "heavy", "gentle", "long",
         "patient", "careful", "tired", "small", "wide", "grey", "silent", "busy", "empty", "crowded",
         "steady", "humble", "broad", "rough", "smooth", "faint", "late", "early", "simple", "plain")
_PEOPLE = ("the miller", "the baker", "the children", "a traveller", "the old woman", "the shepherd",
           "the carpenter", "the fishermen", "a young clerk", "the weaver", "the innkeeper",
           "the farmers", "a stranger", "the teacher", "the potter", "the ferryman", "the neighbours")
_VERBS = ("walked along", "looked at", "spoke about", "waited by", "remembered", "passed",
          "cleaned", "repaired", "painted", "visited", "followed", "described", "watched", "crossed",
          "measured", "carried water to", "sang near", "rested beside", "argued about", "forgot")
_ADVS = ("slowly", "quietly", "often", "again", "early", "patiently", "carefully", "rarely", "gladly",
         "once more", "without hurry", "as usual")
_TIMES = ("in the morning", "after supper", "before the rain", "during the long winter",
          "at the end of the week", "when the bells rang", "on market days", "in late summer",
          "at first light", "while the fire burned low")
_TEMPLATES = (
    "{P} {v} the {a} {n} {t}.",
    "The {n} was {a} {t}, and {p} {v} it {adv}.",
    "Nobody in the village {v2} the {a} {n} as {adv} as {p} did.",
    "{T}, {p} {v} the {n} and thought about the {a} {n2}.",
    "It was said that the {n} had always been {a}, even {t}.",
    "{P} {adv} {v} the {n}, which stood near the {a} {n2}.",
    "There was a {a} {n} beyond the {n2}, and {p} {v} it {t}.",
    "Some said the {n} was too {a}; others only {v2} the {n2}.",
    "The {a} {n} and the {a2} {n2} were all that {p} {v2} {t}.",
    "{P} did not speak of the {n}, but {adv} {v} the {a} {n2}.",
)


_AN = re.compile(r"\b([Aa]) ([aeiou])")


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _filler_sentence(rng: random.Random) -> str:
    tmpl = rng.choice(_TEMPLATES)
    n, n2 = rng.sample(_NOUNS, 2)
    a, a2 = rng.sample(_ADJS, 2)
    p = rng.choice(_PEOPLE)
    t = rng.choice(_TIMES)
    v, v2 = rng.sample(_VERBS, 2)
    s = tmpl.format(P=_cap(p), p=p, v=v, v2=v2, n=n, n2=n2, a=a, a2=a2, adv=rng.choice(_ADVS),
                    t=t, T=_cap(t))
    return _AN.sub(r"\1n \2", s)


# -- planted facts ----------------------------------------------------------------------------------

_ONSETS = ("b", "br", "d", "dr", "f", "g", "gr", "h", "k", "l", "m", "n", "p", "r", "s", "st", "t",
           "th", "v", "w", "z", "c", "j", "y")
_VOWELS = ("a", "e", "i", "o", "u", "ae", "ei", "ou", "ia")
_CODAS = ("n", "r", "s", "l", "th", "ck", "rn", "ld", "ss", "x", "m", "nd")
_DIRECTIONS = ("north", "south", "east", "west", "upper", "lower", "inner", "outer")
_BUILDINGS = ("tower", "granary", "lighthouse", "watchhouse", "toll gate", "boathouse", "observatory",
              "bell tower", "armoury", "library", "salt store", "signal fire")
_GOODS = ("salted herring", "apple cider", "lamp oil", "pickled cabbage", "pine tar", "barley malt",
          "linseed", "whale oil", "honey mead", "vinegar")
_COLOURS = ("vermilion", "ochre", "teal", "crimson", "saffron", "indigo", "umber", "cobalt", "russet",
            "turquoise", "mauve", "olive green")
_GUILDS = ("tanners", "glassblowers", "rope makers", "coopers", "chandlers", "dyers", "saddlers",
           "bookbinders", "clockmakers", "masons")
_DISHES = ("smoked eel pie", "quince tart", "nettle soup", "mutton dumplings", "roast pigeon",
           "plum porridge", "fried sorrel cakes", "chestnut bread", "herring in mustard",
           "turnip gratin", "elderflower fritters", "pear and walnut pudding")
_INSTRUMENTS = ("hurdy-gurdy", "bassoon", "cittern", "dulcimer", "oboe", "viola", "bagpipe", "lute",
                "harmonium", "zither")


@dataclass
class Fact:
    kind: str
    sentence: str
    exact_q: str
    para_q: str
    answers: list[str]


class _Pool:
    """Draw names, numbers and subjects without replacement (across all books of one call)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        self._filler_words = {w for group in (_NOUNS, _ADJS, _VERBS, _ADVS, _TIMES, _PEOPLE)
                              for phrase in group for w in phrase.split()}

    def _fresh(self, make, reuse_ok: bool = False) -> str:
        for _ in range(10_000):
            x = make()
            if x not in self.used:
                self.used.add(x)
                return x
        if reuse_ok:  # a small list ran out (very many books): repeat an answer rather than fail
            return make()
        raise RuntimeError("pool exhausted")

    def word(self, syllables: int = 2) -> str:
        def make():
            w = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(syllables))
            w += self.rng.choice(_CODAS)
            return w if w not in self._filler_words and len(w) >= 4 else ""
        w = ""
        while not w:
            w = self._fresh(make)
        return w

    def name(self) -> tuple[str, str]:
        first = _cap(self.word(self.rng.choice((1, 2))))
        last = _cap(self.word(self.rng.choice((1, 2))))
        return first, last

    def number(self, lo: int, hi: int) -> str:
        return self._fresh(lambda: str(self.rng.randint(lo, hi)))

    def pick(self, *choices: tuple[str, ...]) -> str:
        """A fresh combination of one item from each tuple, joined by spaces."""
        return self._fresh(lambda: " ".join(self.rng.choice(c) for c in choices), reuse_ok=True)


def _make_fact(kind: str, pool: _Pool) -> Fact:
    rng = pool.rng
    if kind == "keeper":
        place = pool.pick(_DIRECTIONS, _BUILDINGS)
        first, last = pool.name()
        return Fact(kind, f"The keeper of the {place} is named {first} {last}.",
                    f"What is the name of the keeper of the {place}?",
                    f"Who looks after the {place}?", [f"{first} {last}", last])
    if kind == "cargo":
        ship = _cap(pool.word(2))
        good = rng.choice(_GOODS)
        n = pool.number(120, 980)
        return Fact(kind, f"The ship {ship} carried exactly {n} barrels of {good} on her last voyage.",
                    f"How many barrels of {good} did the ship {ship} carry on her last voyage?",
                    f"On its final trip, how big was the {ship}'s load, counted in casks?",
                    [n, f"{n} barrels"])
    if kind == "founded":
        town = _cap(pool.word(2))
        year = pool.number(1102, 1889)
        return Fact(kind, f"The village of {town} was founded in the year {year}.",
                    f"In what year was the village of {town} founded?",
                    f"When did the first settlers establish {town}?", [year])
    if kind == "password":
        place = pool.pick(_DIRECTIONS, _BUILDINGS)
        word = pool.word(3)
        return Fact(kind, f"The password for the archive of the {place} is {word}.",
                    f"What is the password for the archive of the {place}?",
                    f"Which secret word opens the records kept at the {place}?", [word])
    if kind == "colour":
        guild = pool.pick(_GUILDS)
        town = _cap(pool.word(2))
        colour = pool.pick(_COLOURS)
        return Fact(kind, f"The door of the {guild} guildhall in {town} is painted {colour}.",
                    f"What colour is the door of the {guild} guildhall in {town}?",
                    f"If you visit {town}, what shade will you see on the entrance of the {guild}' hall?",
                    [colour])
    if kind == "bridge":
        town = _cap(pool.word(2))
        n = pool.number(31, 740)
        return Fact(kind, f"The stone bridge at {town} is {n} metres long.",
                    f"How long is the stone bridge at {town}?",
                    f"What distance does one cover crossing the stone bridge at {town}?",
                    [f"{n} metres", n, f"{n} meters"])
    if kind == "dish":
        first, last = pool.name()
        dish = pool.pick(_DISHES)
        return Fact(kind, f"The favourite dish of {first} {last} is {dish}.",
                    f"What is the favourite dish of {first} {last}?",
                    f"What does {first} {last} most like to eat?", [dish])
    if kind == "instrument":
        first, last = pool.name()
        instrument = pool.pick(_INSTRUMENTS)
        return Fact(kind, f"At every festival {first} {last} plays the {instrument}.",
                    f"Which instrument does {first} {last} play at every festival?",
                    f"When there is a celebration, what does {first} {last} make music on?",
                    [instrument])
    raise ValueError(kind)


KINDS = ("keeper", "cargo", "founded", "password", "colour", "bridge", "dish", "instrument")


# -- books ------------------------------------------------------------------------------------------

def _write_pdf(path: Path, title: str, pages: list[str]) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_creation_date(FIXED_DATE)
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    pdf.output(str(path))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_books(out_dir: str | Path, seed: int = 0, pages: int | list[int] = 40, n_books: int = 3,
               facts_per_book: int = 12, n_two_book: int = 6, words_per_page: int = 250) -> dict:
    """Write ``n_books`` PDFs with planted facts and planted.json into ``out_dir``; return the set.

    ``pages`` is the page count of every book, or a list with one count per book. Each book gets
    ``facts_per_book`` facts on distinct pages (one fact per page at most); questions alternate
    between wording taken from the fact ("exact-term") and reworded ("paraphrase"). ``n_two_book``
    questions each combine two facts from two different books.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page_counts = list(pages) if isinstance(pages, (list, tuple)) else [int(pages)] * n_books
    if len(page_counts) != n_books:
        raise ValueError("pages must be one count or one per book")
    if any(facts_per_book > n for n in page_counts):
        raise ValueError("a book needs at least one page per planted fact")
    rng = random.Random(seed)
    pool = _Pool(random.Random(rng.random()))
    documents, questions, by_book = [], [], []
    qn = 0
    for b in range(n_books):
        n_pages = page_counts[b]
        book_id = f"planted-{seed}-{b + 1:02d}"
        title = f"The Annals of {_cap(pool.word(2))}"
        kinds = [KINDS[(b + i) % len(KINDS)] for i in range(facts_per_book)]
        facts = [_make_fact(k, pool) for k in kinds]
        fact_pages = sorted(rng.sample(range(1, n_pages + 1), facts_per_book))
        rng.shuffle(facts)
        placed = dict(zip(fact_pages, facts))
        texts = []
        for number in range(1, n_pages + 1):
            sentences, words = [], 0
            while words < words_per_page:
                s = _filler_sentence(rng)
                sentences.append(s)
                words += len(s.split())
            if number in placed:
                sentences.insert(rng.randint(0, len(sentences)), placed[number].sentence)
            if number == 1:
                sentences.insert(0, title + ".")
            cut = len(sentences) // 2
            texts.append(" ".join(sentences[:cut]) + "\n\n" + " ".join(sentences[cut:]))
        path = out / f"{book_id}.pdf"
        _write_pdf(path, title, texts)
        documents.append({"id": book_id, "title": title, "path": str(path), "sha256": _sha256(path),
                          "pages": n_pages, "seed": seed})
        book_facts = []
        for i, (page, fact) in enumerate(sorted(placed.items())):
            qn += 1
            style = "exact-term" if i % 2 == 0 else "paraphrase"
            questions.append({"id": f"{book_id}-q{i + 1:02d}",
                              "question": fact.exact_q if style == "exact-term" else fact.para_q,
                              "answers": fact.answers, "docs": [book_id],
                              "gold": [{"doc": book_id, "page": page}], "kind": "single", "style": style,
                              "fact": fact.sentence, "fact_kind": fact.kind})
            book_facts.append((page, fact))
        by_book.append((book_id, book_facts))
    # two-book questions: a fact from book i and one from book i+1 (wrapping), not reused
    if n_books >= 2:
        cursors = [len(f) - 1 for _, f in by_book]
        for k in range(n_two_book):
            a, b = k % n_books, (k + 1) % n_books
            if cursors[a] < 0 or cursors[b] < 0:
                break
            (ida, fa), (idb, fb) = by_book[a], by_book[b]
            pa, facta = fa[cursors[a]]
            cursors[a] -= 1
            pb, factb = fb[cursors[b]]
            cursors[b] -= 1
            questions.append({"id": f"planted-{seed}-two-{k + 1:02d}",
                              "question": f"Answer both: {facta.exact_q} And {factb.exact_q[0].lower()}{factb.exact_q[1:]}",
                              "answers": [f"{facta.answers[0]} and {factb.answers[0]}"],
                              "answer_parts": [facta.answers, factb.answers], "docs": [ida, idb],
                              "gold": [{"doc": ida, "page": pa}, {"doc": idb, "page": pb}],
                              "kind": "two-book", "style": "exact-term",
                              "fact": f"{facta.sentence} {factb.sentence}", "fact_kind": f"{facta.kind}+{factb.kind}"})
    data = {"version": 1, "generator": "bench/qa/planted.py",
            "params": {"seed": seed, "pages": page_counts, "n_books": n_books, "facts_per_book": facts_per_book,
                       "n_two_book": n_two_book, "words_per_page": words_per_page},
            "documents": documents, "questions": questions}
    (out / "planted.json").write_text(json.dumps(data, indent=1), encoding="utf-8")
    return data


def grade(answer_text: str, question: dict) -> bool:
    """Same rule as realdocs.grade: normalised containment; two-book questions need both parts."""
    return _grade(answer_text, question)


def check(data: dict) -> list[str]:
    """Read every book back with ingest.read_document; list the problems (empty when all is well):
    wrong page count, an answer missing from its gold page, or a first answer found on another page."""
    from bench.qa.grading import contains
    from ingest import read_document

    problems = []
    texts = {}
    for doc in data["documents"]:
        pages = {p.number: p.text for p in read_document(doc["path"]).pages}
        if len(pages) != doc["pages"]:
            problems.append(f"{doc['id']}: {len(pages)} pages, expected {doc['pages']}")
        texts[doc["id"]] = pages
    for q in data["questions"]:
        parts = q.get("answer_parts") or [q["answers"]]
        for gold, alts in zip(q["gold"], parts):
            pages = texts[gold["doc"]]
            if not contains(pages.get(gold["page"], ""), alts[0]):
                problems.append(f"{q['id']}: '{alts[0]}' not on {gold['doc']} p{gold['page']}")
            elsewhere = [n for n, t in pages.items() if n != gold["page"] and contains(t, alts[0])]
            if elsewhere:
                problems.append(f"{q['id']}: '{alts[0]}' also on {gold['doc']} pages {elsewhere}")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Write planted-fact books (PDF) and planted.json.")
    ap.add_argument("out_dir")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--books", type=int, default=3)
    ap.add_argument("--facts", type=int, default=12, help="facts per book")
    ap.add_argument("--two-book", type=int, default=6)
    ap.add_argument("--words-per-page", type=int, default=250)
    ap.add_argument("--check", action="store_true", help="read the PDFs back and verify every gold page")
    args = ap.parse_args(argv)
    data = make_books(args.out_dir, seed=args.seed, pages=args.pages, n_books=args.books,
                      facts_per_book=args.facts, n_two_book=args.two_book, words_per_page=args.words_per_page)
    singles = sum(q["kind"] == "single" for q in data["questions"])
    print(f"{len(data['documents'])} books, {len(data['questions'])} questions "
          f"({singles} single, {len(data['questions']) - singles} two-book) -> {Path(args.out_dir) / 'planted.json'}")
    if args.check:
        problems = check(data)
        for p in problems:
            print("FAIL", p)
        print("ALL OK" if not problems else f"{len(problems)} FAILURE(S)")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
