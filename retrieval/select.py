"""Which segments of the chosen books go into the context, given their similarity to the question.

One rule for both modes, so comparing them is fair: a segment's size is its
token count (raw text, uncompressed mode) or its number of memory slots
(compressed mode); the budget is in the same unit.

- Everything fits: every segment, in document order (nothing is lost).
- Otherwise: segments by decreasing score; each one taken (the "hit") brings
  its neighbours within ``neighbours`` segments when they fit too, because a
  fact often straddles a segment boundary and a bare segment reads out of
  context.
- Several books: each book has its fair share of the budget (``per_book``).
  One global ranking let the book that matches the question's words best fill
  the whole budget, so a question about two books saw one (both gold pages in
  the context for 3 of the 10 two-book questions of the real-document set).
  Now each book's best hit comes first (best books first), then each book takes
  its own hits, best first, within budget / books; a book that needs less passes
  the rest on to the books after it (best books first, so the weaker matches,
  whose right segment is less often their first, get the room), and what is
  still left goes to the best remaining hits of any book.
- Chosen segments are then put back in document order per book, and books in
  the order the user chose them: the decoder reads memories, and the prompt
  reads passages, in document order.
"""
from __future__ import annotations

from typing import Mapping, Sequence

from retrieval.prompt import Passage, Selection, TextSegment, fit_budget


def select_segments(books: Sequence[tuple[str, Sequence[TextSegment]]],
                    scores: Sequence[Mapping[int, float]], budget: int, neighbours: int = 1,
                    every_book: bool = False, reach: Sequence[Mapping[int, tuple[int, int]]] | None = None,
                    per_book: bool = True) -> Selection:
    """Choose segments of ``books`` (title, segments in document order) within ``budget``.

    ``scores[i]`` maps a position in ``books[i][1]`` to its similarity with the
    question (missing: never chosen as a hit, may come in as a neighbour).
    Without any score at all this falls back to ``fit_budget`` (leading segments).
    ``per_book`` (default): every book with a hit gets its share of the budget (see
    the module docstring). Without it, one global ranking, where one book's hit and
    its neighbours can fill a small budget before a second book's hit is reached;
    ``every_book`` then takes each book's best hit first (best books first).
    ``reach[i][j]``: (segments before, segments after) that come with hit j of
    book i, instead of ``neighbours`` each way (e.g. none when the match sits
    in the middle of its segment, the next one when it ends the segment).
    """
    if len(scores) != len(books):
        raise ValueError("one score map per book")
    sizes = [[s.n_tokens for s in segs] for _, segs in books]
    if sum(map(sum, sizes)) <= budget:
        return Selection([Passage(t, s, scores[i].get(j)) for i, (t, segs) in enumerate(books)
                          for j, s in enumerate(segs)], [])
    if not any(scores):
        return fit_budget(books, budget)

    pick = _Picker(sizes, budget)
    ranked = sorted(((sc, i, j) for i, m in enumerate(scores) for j, sc in m.items()
                     if 0 <= j < len(sizes[i])), key=lambda x: (-x[0], x[1], x[2]))

    def hit(i: int, j: int, cap: int | None = None) -> None:
        """Hit j of book i (unless already in, or too big for what is left) and the neighbours it calls for."""
        if (i, j) in pending:
            pending.discard((i, j))
        elif (i, j) in hits and cap is None:  # taken within its book's share: its neighbours may fit now
            pass
        elif j in pick.chosen[i] or not pick.take(i, j, cap):
            # already in as a neighbour of a better hit, or too big for what is left (a smaller,
            # lower-ranked hit may still fit)
            return
        hits.add((i, j))
        before, after = reach[i].get(j, (neighbours, neighbours)) if reach is not None else (neighbours, neighbours)
        pick.around(i, j, before, after, cap)

    hits: set[tuple[int, int]] = set()
    pending = pick.each_books_best(ranked) if every_book or per_book else set()  # hits whose neighbours are to come
    order = list(dict.fromkeys(i for _, i, _ in ranked))  # books with a hit, best first
    if per_book and len(order) > 1:
        left = budget
        for k, i in enumerate(order):
            cap = pick.used_by[i] + max(0, left - sum(pick.used_by[b] for b in order[k:])) // (len(order) - k)
            for _, b, j in ranked:
                if b == i:
                    hit(i, j, cap)
            left -= pick.used_by[i]
    for _, i, j in ranked:
        hit(i, j)
    chosen = pick.chosen
    passages = [Passage(t, books[i][1][j], scores[i].get(j)) for i, (t, _) in enumerate(books)
                for j in sorted(chosen[i])]
    truncated = [t for i, (t, segs) in enumerate(books) if len(chosen[i]) < len(segs)]
    return Selection(passages, truncated)


class _Picker:
    """Segments taken so far per book, within a token budget (and, optionally, a cap on one book's tokens)."""

    def __init__(self, sizes: list[list[int]], budget: int):
        self.sizes, self.budget, self.used = sizes, budget, 0
        self.chosen: list[set[int]] = [set() for _ in sizes]
        self.used_by = [0] * len(sizes)

    def take(self, i: int, j: int, cap: int | None = None) -> bool:
        """Take segment j of book i if it exists, is new and fits (in the budget, and in ``cap`` for book i)."""
        if j < 0 or j >= len(self.sizes[i]) or j in self.chosen[i] or self.used + self.sizes[i][j] > self.budget:
            return False
        if cap is not None and self.used_by[i] + self.sizes[i][j] > cap:
            return False
        self.chosen[i].add(j)
        self.used += self.sizes[i][j]
        self.used_by[i] += self.sizes[i][j]
        return True

    def each_books_best(self, ranked: list[tuple[float, int, int]]) -> set[tuple[int, int]]:
        """Take each book's best hit first (best books first); the hits taken."""
        seen: set[int] = set()
        taken = set()
        for _, i, j in ranked:
            if i not in seen:
                seen.add(i)
                if self.take(i, j):
                    taken.add((i, j))
        return taken

    def around(self, i: int, j: int, before: int, after: int, cap: int | None = None) -> None:
        """The neighbours of hit j: what follows first (an answer usually continues past a cut)."""
        for d in range(1, max(before, after) + 1):
            if d <= after:
                self.take(i, j + d, cap)
            if d <= before:
                self.take(i, j - d, cap)
