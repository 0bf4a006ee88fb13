"""Answering a question: one context builder per mode, then one generation path.

- ``uncompressed``: the chosen books' raw text goes into the prompt (all of it
  when it fits the token budget, else the segments closest to the question);
- ``compressed``: the books' stored memories go into the cache before the
  prompt (all when they fit, else the best segments' memories).
Both choose segments by the same rule (``retrieval.select``), so comparing
them is fair, and both cite the segments they used.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Collection, Iterator, Sequence

from retrieval.aim import aimed
from retrieval.citations import Source, cite
from retrieval.narrow import best_pages, best_per_book, narrower, page_text
from retrieval.prompt import EXCERPT_PLACES, Excerpt, Selection, build_messages, count_tokens, fit_budget
from retrieval.retriever import Retriever
from retrieval.select import select_segments
from storage import DocumentInfo, Store
from tome.doubt import foreign_terms, restates_question
from tome.memories import Memories
from tome.models import Models
from tome.timing import Timer
from uio.torch_thread import run_on_torch

MEMORY_LAYOUTS = ("before", "head", "inline")  # where compressed mode's memories sit (CompressedContext)
# "auto": measured per model (docs/COMPRESSION.md, "Twenty-second run"): after the instructions Qwen answered as
# often (90 and 91 of 170 manual questions, 32 and 31 of 42 planted facts), SmolLM2 lost 4 of 42 planted facts
LAYOUT_DEFAULTS = {"qwen": "head"}
LAYOUT_FALLBACK = "before"  # any other model


def resolve_layout(name: str, model_key: str | None) -> str:
    """The layout ``name`` stands for ("auto": the measured one for the model); refuses an unknown one."""
    if name == "auto":
        return LAYOUT_DEFAULTS.get(model_key or "", LAYOUT_FALLBACK)
    if name not in MEMORY_LAYOUTS:
        raise ValueError(f"memory_layout must be one of {('auto',) + MEMORY_LAYOUTS}, not {name!r}")
    return name


MODES = ("uncompressed", "compressed")
SEGMENT_CACHE = 16  # documents whose segments the answerer keeps (a book's text: a few MB)


@dataclass
class AnswerUpdate:
    """One step of a streamed answer; the last one has ``done`` set and the figures."""

    text: str
    done: bool = False
    mode: str = "uncompressed"
    conversation_id: int | None = None
    sources: list[Source] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)  # books that did not fit whole
    context_tokens: int = 0
    stats: dict = field(default_factory=dict)
    note: str = ""  # what the answerer is doing besides writing (e.g. re-reading a page)


@dataclass(frozen=True)
class _SlotSegment:
    """A segment seen through its memory: its size in the context is its number of slots."""

    text: str
    page_start: int
    page_end: int
    index: int
    slots: int

    @property
    def n_tokens(self) -> int:
        return self.slots


@dataclass
class Context:
    """What one question is answered from: the chosen segments, then the messages and cache that carry them."""

    selection: Selection
    owner: dict[int, int]  # id(segment) -> its document's id
    messages: list[dict] = field(default_factory=list)
    cache: object = None  # a DynamicCache holding ``prefix`` positions: memories (and text around them)
    prefix: int = 0
    prompt_ids: list[int] | None = None  # the prompt after the cache, where the cache holds part of the template
    stats: dict = field(default_factory=dict)  # mode-specific figures for the answer
    ranking: object = None  # the retriever's Ranking the selection came from (None: not ranked)


class UncompressedContext:
    """The books' raw text in the prompt, within ``Config.context_budget`` tokens per book (at most
    ``Config.context_books`` books' worth)."""

    def __init__(self, answerer: "Answerer", ratio: int | None = None, compressor: str | None = None):
        self.a = answerer

    def select(self, docs: Sequence[DocumentInfo], question: str, history, max_new: int, timer: Timer) -> Context:
        a = self.a
        with timer.phase("lookup"):
            books = [(d.title, a.segments(d)) for d in docs]
        bare = count_tokens(a.lm.tokenizer, build_messages(fit_budget([], 0), question, history))
        room = a.lm.window - bare - max_new - 64  # 64: passage headers
        cfg = a.models.config
        budget = cfg.context_budget * max(1, min(len(docs), cfg.context_books))  # each book its own room
        return a.choose(docs, books, question, max(0, min(budget, room)), timer)

    def assemble(self, ctx: Context, question: str, history, timer: Timer) -> None:
        ctx.messages = build_messages(ctx.selection, question, history)


class CompressedContext:
    """The books' stored memories in the cache, within the memory budget.

    Layout (``Config.memory_layout``; "auto" by model, ``LAYOUT_DEFAULTS``) "head": the memories after the system
    message's instructions, whose keys and values are then the same on every question and read once
    (``uio/head_kv.py``); "before": the memories first, then the chat prompt naming the books; "inline": the
    uncompressed mode's system prompt with each book's memories after its title, the chat template's text around
    them read by the model.
    Positions "consecutive" (default) or "spaced" (each slot's distance to the others as in its segment).
    """

    MARK = "<<tome:memories>>"  # where a book's memories go in the system message (never shown to the model)

    def __init__(self, answerer: "Answerer", ratio: int | None = None, compressor: str | None = None):
        self.a = answerer
        self.compressor = answerer.models.compressor(ratio, compressor)  # what made the memories read
        self.memories: list = []
        self.excerpts: list = []  # retrieval.retriever.Retrieved: passages given as text beside the memories
        self.messages: list[dict] = []  # the chat (select), read by assemble and the generation
        self.pieces: list[list[int]] = []  # its token ids cut at the memories ("head", "inline"; select)
        self.layout = resolve_layout(answerer.models.config.memory_layout, answerer.models.key)
        self.positions = answerer.models.config.memory_positions
        if answerer.models.config.memory_excerpt_place not in EXCERPT_PLACES:
            raise ValueError(f"memory_excerpt_place must be one of {EXCERPT_PLACES}, "
                             f"not {answerer.models.config.memory_excerpt_place!r}")
        if not 0 < answerer.models.config.memory_excerpt_scale <= 1:
            raise ValueError("memory_excerpt_scale must lie in (0, 1], "
                             f"not {answerer.models.config.memory_excerpt_scale!r}")
        if answerer.models.config.memory_excerpt_unit not in ("passage", "page"):
            raise ValueError('memory_excerpt_unit must be "passage" or "page", '
                             f"not {answerer.models.config.memory_excerpt_unit!r}")

    def _messages(self, question: str, history) -> list[dict]:
        return build_messages(fit_budget([], 0), question, history, memory_of=self.titles,
                              memory_marker=self.MARK if self.layout == "inline" else None,
                              head_marker=self.MARK if self.layout == "head" else "", excerpts=self.excerpts,
                              excerpts_in=self.a.models.config.memory_excerpt_place,
                              memory_prompt=self.a.models.config.memory_prompt)

    def _passage_text(self, hit, ranking, segments: dict, question: str) -> str:
        """A passage's text as read: re-cut around the question's best sentence (``Config.memory_excerpt_aim``)
        or as ranked."""
        if not self.a.models.config.memory_excerpt_aim:
            return hit.text
        page = page_text(ranking, hit.document_id, hit.page_start, segments[hit.document_id])
        return aimed(hit, page, question, self.a.models.config.memory_excerpt_scale)

    def _excerpts(self, docs: Sequence[DocumentInfo], ranking, stored: list, question: str) -> list[Excerpt]:
        """The text given beside the memories (``Config.memory_excerpts``, ``memory_excerpt_unit``), best first:
        each chosen book's best passages, or the pages of each book's best passages, whole (a passage is a
        window of its page; the words that answer may sit beside it). The books are those of the best
        passages, up to ``context_books``: a question over two books gets text of both, as in uncompressed
        mode."""
        cfg = self.a.models.config
        n = max(0, cfg.memory_excerpts)
        books = max(1, min(len(docs), cfg.context_books))
        segments = {d.id: segs for d, segs in zip(docs, stored)}
        if cfg.memory_excerpt_unit == "passage":
            return [Excerpt(h.title, h.page_start, self._passage_text(h, ranking, segments, question),
                            h.document_id, h.index)
                    for h in best_per_book(ranking, {d.id for d in docs}, books, n)]
        pages, owner = best_pages(ranking, {d.id: d.title for d in docs}, segments.__getitem__, self.a.count_tokens,
                                  books, n)
        return [Excerpt(p.title, p.segment.page_start, p.segment.text, owner[id(p.segment)], p.segment.index)
                for p in pages.passages]

    def select(self, docs: Sequence[DocumentInfo], question: str, history, max_new: int, timer: Timer) -> Context:
        a = self.a
        self.docs, self.titles = docs, [d.title for d in docs]
        c = self.compressor
        self.memories = [a.memories.load(d, c.ratio, timer=timer, compressor=c.name) for d in docs]
        with timer.phase("lookup"):
            stored = [a.segments(d) for d in docs]
        with timer.phase("select"):
            ranking = a.retriever.rank(docs, question)
        self.excerpts = self._excerpts(docs, ranking, stored, question)
        books = [(d.title, [_SlotSegment(s.text, s.page_start, s.page_end, s.index, mem.slots[j])
                            for j, s in enumerate(segs)])
                 for d, mem, segs in zip(docs, self.memories, stored)]
        self.messages = self._messages(question, history)
        if self.layout in ("head", "inline"):  # tokenized once: the pieces are assemble's too
            from uio.generate import split_chat

            self.pieces = split_chat(a.lm.tokenizer, self.messages, self.MARK)
            bare = sum(map(len, self.pieces))
        else:
            bare = count_tokens(a.lm.tokenizer, self.messages)
        self.room = max(0, a.lm.window - bare - max_new - 16)  # positions the memories may span
        budget = self.room
        cap = a.memory_budget(excerpts=bool(self.excerpts))
        if cap:  # the question attends to every slot: cap them for a flat TTFT
            budget = min(budget, cap)
        skip = ({(e.document_id, e.segment) for e in self.excerpts}
                if a.models.config.memory_skip_excerpted else ())
        return a.choose(docs, books, question, budget, timer, ranking, skip)

    def assemble(self, ctx: Context, question: str, history, timer: Timer) -> None:
        from uio.decoder import build_cache, build_context

        c, lm = self.compressor, self.a.lm
        with timer.phase("assembly"):
            chosen = [mem.select([p.segment.index for p in ctx.selection.passages
                                  if ctx.owner[id(p.segment)] == d.id]) for d, mem in zip(self.docs, self.memories)]
            ctx.messages = self.messages  # built in select, from which nothing changed since
            if self.layout == "inline":
                pieces = list(self.pieces)  # len(docs) + 1 text pieces, tokenized in select
                parts = [pieces[0]] + [x for mem, text in zip(chosen, pieces[1:]) for x in (mem, text)]
                ctx.prompt_ids = parts.pop()  # the last piece (end of system, question) is the prompt
                ctx.cache, ctx.prefix = build_context(lm, parts, c.identity(lm), self.positions, self.room)
            elif self.layout == "head":  # the instructions' keys and values are read once (uio/head_kv.py)
                head, ctx.prompt_ids = self.pieces
                if self.positions == "consecutive":
                    ctx.cache, ctx.prefix = build_cache(lm, chosen, c.identity(lm), head=head)
                else:
                    ctx.cache, ctx.prefix = build_context(lm, [head, *chosen], c.identity(lm), self.positions,
                                                          self.room, reuse_head=True)
            elif self.positions == "consecutive":
                ctx.cache, ctx.prefix = build_cache(lm, chosen, c.identity(lm))
            else:
                ctx.cache, ctx.prefix = build_context(lm, chosen, c.identity(lm), self.positions, self.room)
        ctx.stats = {"compressor": c.name, "ratio": c.ratio, "memory_slots": sum(m.num_slots for m in chosen),
                     "memory_layout": self.layout,
                     "memory_positions": self.positions, "adapter_trained": self.a.models.trained(c.ratio, c.name),
                     "excerpts": [{"document_id": e.document_id, "page": e.page, "segment": e.segment}
                                  for e in self.excerpts],
                     "excerpt_unit": self.a.models.config.memory_excerpt_unit}


BUILDERS = {"uncompressed": UncompressedContext, "compressed": CompressedContext}


def _marks(answer: str, question: str, read: Sequence[str]) -> dict:
    """An answer's doubt marks (``tome.doubt``): it restates the question (found no answer; the best page is read
    again), or it names terms found in none of the texts ``read`` nor the question (marked for the user to check:
    re-reading for them changed no answer of 122, docs/COMPRESSION.md "Fifteenth run")."""
    return {"restates_question": restates_question(answer, question),
            "foreign_terms": foreign_terms(answer, [question, *read])}


class Answerer:
    """Streams answers over the chosen books and records both turns in the conversation."""

    def __init__(self, models: Models, store: Store, retriever: Retriever, memories: Memories):
        self.models, self.store, self.retriever, self.memories = models, store, retriever, memories
        # document version -> its stored segments: read from the database once, not on every question (~2 ms)
        self._segments: OrderedDict[tuple[int, str], list] = OrderedDict()
        self._segments_lock = threading.Lock()

    @property
    def lm(self):
        return self.models.lm

    def segments(self, doc: DocumentInfo) -> list:
        """``doc``'s stored segments, in order (kept for the last ``SEGMENT_CACHE`` documents; keyed by id and
        sha256, so a document deleted and another stored under its id is read afresh)."""
        key = (doc.id, doc.sha256)
        with self._segments_lock:
            if key in self._segments:
                self._segments.move_to_end(key)
                return list(self._segments[key])
        rows = self.store.segments(doc.id)
        with self._segments_lock:
            self._segments[key] = rows
            while len(self._segments) > SEGMENT_CACHE:
                self._segments.popitem(last=False)
        return list(rows)

    def count_tokens(self, text: str) -> int:
        """``text``'s length in the model's tokens."""
        return len(self.lm.tokenizer(text)["input_ids"])

    def memory_budget(self, excerpts: bool = False) -> int:
        """Most memory slots a compressed answer attends to, with text ``excerpts`` beside them or not; 0: no
        cap (see Config.memory_budget and memory_excerpt_budget)."""
        cfg = self.models.config
        if cfg.memory_budget >= 0:
            cap = cfg.memory_budget
        else:
            from uio.model import flat_ttft_slots

            cap = 0 if self.lm.device.type != "cpu" else flat_ttft_slots(self.lm)
        if excerpts and cfg.memory_excerpt_budget > 0:
            cap = min(cap, cfg.memory_excerpt_budget) if cap else cfg.memory_excerpt_budget
        return cap

    def choose(self, docs: Sequence[DocumentInfo], books, question: str, budget: int, timer: Timer,
               ranking=None, skip: Collection[tuple[int, int]] = ()) -> Context:
        """The segments of ``books`` closest to ``question`` within ``budget`` (all of them when they fit).

        Segments are scored by their best passage (vectors and full text fused, see
        ``retrieval.retriever``); a hit brings its neighbours only where that passage
        touches its segment's edge; each chosen segment keeps that passage, for its
        citation, and its page breaks, for the prompt's page labels. ``ranking``: the question's
        ranking where the caller made it already. ``skip``: (document id, segment index) pairs never chosen as
        hits (they may still come in as a hit's neighbours).
        """
        neighbours = self.models.config.neighbours
        with timer.phase("select"):
            ranking = ranking or self.retriever.rank(docs, question)
            scores = ranking.segment_scores([d.id for d in docs])
            if skip:
                scores = {d: {j: v for j, v in m.items() if (d, j) not in skip} for d, m in scores.items()}
            # a hit's neighbours come only where its best passage touches its segment's edge
            reach = [ranking.reach(d.id, [s.text for s in segs], neighbours) for d, (_, segs) in zip(docs, books)]
            selection = select_segments(books, [scores[d.id] for d in docs], budget, neighbours, reach=reach)
        owner = {id(s): d.id for d, (_, segs) in zip(docs, books) for s in segs}
        selection = Selection([replace(p, match=ranking.best(owner[id(p.segment)], p.segment.index),
                                       breaks=ranking.page_breaks(owner[id(p.segment)], p.segment.index))
                               for p in selection.passages], selection.truncated)
        return Context(selection, owner, ranking=ranking)

    def ask(self, doc_refs: Sequence[int | str], question: str, history: Sequence[dict] = (),
            conversation_id: int | None = None, max_new_tokens: int | None = None,
            temperature: float = 0.0, stop: threading.Event | None = None,
            mode: str = "uncompressed", ratio: int | None = None, cache_policy: str | None = None,
            cache_eviction: float | None = None, compressor: str | None = None) -> Iterator[AnswerUpdate]:
        """Answer ``question`` over the chosen books, streaming; saves both turns to the conversation.

        ``cache_policy``/``cache_eviction`` prune the recent cache (prompt and generated tokens; never the
        memories), ``compressor``/``ratio`` choose the memories of compressed mode (made on demand where
        missing); all default to the config's. An answer that only restates the question is
        asked again over each book's best page alone, as text, in either mode (``Config.reread``; its first answer
        kept in the figures; compressed mode only where it read passages as text, ``Config.memory_excerpts``).
        """
        timer = Timer()  # stats["timing"]: where the time to the first token went
        question = question.strip()
        docs = self._ready(doc_refs, question, mode, timer)
        max_new = max_new_tokens or self.models.config.max_new_tokens
        policy = self.models.cache_policy(cache_policy, cache_eviction)
        builder = BUILDERS[mode](self, ratio, compressor)
        ctx = builder.select(docs, question, history, max_new, timer)
        sources = cite(((ctx.owner[id(p.segment)], p) for p in ctx.selection.passages), question)
        if conversation_id is None:  # the question is saved with its new conversation, in one commit
            conversation_id = self.store.new_conversation(question[:80], [d.id for d in docs], question=question)
        else:
            self.store.add_message(conversation_id, "user", question)
        update = AnswerUpdate(text="", mode=mode, conversation_id=conversation_id, sources=sources,
                              truncated=ctx.selection.truncated, context_tokens=ctx.selection.tokens)
        with self.models.lock:
            run_on_torch(builder.assemble, ctx, question, history, timer)  # uio/torch_thread.py
            gen = yield from self._generate(ctx, policy, update, max_new, temperature, stop)
        update.stats = self._figures(gen.stats, ctx, policy, timer)
        update.text = update.text.strip()
        # what the answer drew on: the segments read (as text or as memories) and compressed mode's passages
        update.stats |= _marks(update.text, question, [p.segment.text for p in ctx.selection.passages]
                               + [e.text for e in getattr(builder, "excerpts", [])])
        # compressed mode re-reads the page as text too where this answer read text at all (its excerpts):
        # memories alone stay memories alone
        text_read = mode == "uncompressed" or bool(update.stats.get("excerpts"))
        if (update.stats["restates_question"] and self.models.config.reread and text_read
                and not (stop is not None and stop.is_set())):
            reader = builder if mode == "uncompressed" else UncompressedContext(self)
            yield from self._reread(ctx, docs, reader, question, history, update, max_new, temperature, stop,
                                    lambda: self.models.cache_policy(cache_policy, cache_eviction),
                                    narrow_only=mode == "uncompressed")
        update.done = True
        self.store.add_message(conversation_id, "assistant", update.text, mode=mode,
                               stats=update.stats | {"sources": [s.as_dict() for s in update.sources]})
        yield update

    def _generate(self, ctx: Context, policy, update: AnswerUpdate, max_new: int, temperature: float,
                  stop: threading.Event | None):
        """Stream the answer to ``ctx`` into ``update`` (yielding snapshots); returns the generator (its stats)."""
        from uio.generate import stream

        gen = stream(self.lm, ctx.messages, policy, past_key_values=ctx.cache, prefix_len=ctx.prefix,
                     max_new_tokens=max_new, temperature=temperature, stop=stop, prompt_ids=ctx.prompt_ids,
                     draft_tokens=self.models.config.draft_tokens)
        pieces = iter(gen)
        try:
            for piece in pieces:
                update.text += piece
                yield replace(update)  # a snapshot: consumers may keep earlier updates
        finally:
            pieces.close()  # an abandoned answer stops (and joins) its decode thread before the model is free
        return gen

    def _reread(self, ctx: Context, docs: Sequence[DocumentInfo], builder, question: str, history,
                update: AnswerUpdate, max_new: int, temperature: float, stop: threading.Event | None,
                new_policy, narrow_only: bool = True) -> Iterator[AnswerUpdate]:
        """Ask again over each book's best page alone (``retrieval.narrow``) after an answer that restated the
        question; ``update`` then carries the second answer, and its figures the first one's under "reread".

        ``narrow_only``: only when the pages hold less text than the first read (uncompressed mode; a compressed
        read's slots and passage are not text to compare with, and it never saw the page whole)."""
        if ctx.ranking is None:
            return
        books = max(1, min(len(docs), self.models.config.context_books))
        segments = {d.id: self.segments(d) for d in docs}
        selection, owner = best_pages(ctx.ranking, {d.id: d.title for d in docs}, segments.__getitem__,
                                      self.count_tokens, books)
        if not selection.passages or (narrow_only and not narrower(ctx.selection, selection)):
            return
        narrow = Context(selection, owner, ranking=ctx.ranking)
        pages = [f"{p.title}, p. {p.segment.page_start}" for p in selection.passages]
        first = {"first_answer": update.text, "first_context_tokens": update.context_tokens, "pages": pages}
        update.note = "The answer only restated the question: re-reading " + "; ".join(pages) + " alone."
        update.text = ""
        yield replace(update)
        t0 = time.perf_counter()
        with self.models.lock:
            run_on_torch(builder.assemble, narrow, question, history, Timer())
            gen = yield from self._generate(narrow, new_policy(), update, max_new, temperature, stop)
        update.text = update.text.strip()
        update.note = ""
        first["seconds"] = round(time.perf_counter() - t0, 3)  # what the second read added
        first["new_tokens"] = gen.stats.new_tokens
        # the citations: the pages re-read first, then the first read's others
        narrowed = cite(((owner[id(p.segment)], p) for p in selection.passages), question)
        keep = {(s.document_id, s.page_start) for s in narrowed}
        update.sources = narrowed + [s for s in update.sources if (s.document_id, s.page_start) not in keep]
        update.context_tokens = selection.tokens
        update.stats |= {"reread": first, "context_tokens": selection.tokens}
        update.stats |= _marks(update.text, question, [p.segment.text for p in selection.passages])
        update.stats |= {k: v for k, v in gen.stats.as_dict().items() if k in ("confidence", "token_logprobs")}
        update.stats["low_confidence"] = self._low_confidence(gen.stats)

    def _ready(self, doc_refs: Sequence[int | str], question: str, mode: str, timer: Timer) -> list[DocumentInfo]:
        """The chosen documents, after checking the mode, the question and that every book is ready."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}")
        if not question:
            raise ValueError("the question is empty")
        with timer.phase("lookup"):
            docs = [self.store.get_document(r) for r in doc_refs]
        not_ready = [d.title for d in docs if not d.ready]
        if not_ready:
            raise ValueError(f"still being ingested: {', '.join(not_ready)}")
        return docs

    def _low_confidence(self, stats) -> bool:
        """The answer's confidence is below ``Config.confidence_floor`` (never for an empty answer)."""
        return bool(stats.new_tokens) and stats.confidence < self.models.config.confidence_floor

    def _figures(self, stats, ctx: Context, policy, timer: Timer) -> dict:
        """The answer's figures: speed, KV bytes held, the policy, where the time to the first token went."""
        kv = sum(stats.kv_bytes_held)  # what the cache really held at the end, memories included
        out = stats.as_dict() | {"model": self.lm.name, "context_tokens": ctx.selection.tokens, "kv_bytes": kv,
                                 "cache_policy": policy.name, "confidence_floor": self.models.config.confidence_floor,
                                 "low_confidence": self._low_confidence(stats)}
        timer.add("prefill", stats.prefill_s)
        timer.add("first_decode", stats.first_decode_s)
        out["timing"] = timer.as_dict() | {
            "ttft_s": round(timer.since_start(stats.first_token_at), 4) if stats.first_token_at else None}
        return out | ctx.stats

