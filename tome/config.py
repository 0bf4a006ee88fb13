"""Every setting of Tome, with its default and help; ``Config.from_env`` is the one reader of the environment."""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Mapping


RATIOS = (8, 32)  # compression ratios offered (the UI's choice; memories of both are kept by `app.py gc`)


def _flag(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _opt(default: Any, help: str, env: str | None = None, parse: Callable[[str], Any] | None = None):
    """A config field: its default, its help text and the environment variable that sets it."""
    return field(default=default, metadata={"help": help, "env": env, "parse": parse})


@dataclass
class Config:
    """Every setting of Tome. Fields read from the environment name their variable (``TOME_...``)."""

    data_dir: Path = _opt(Path("data"), "where the library lives: database, uploads, memories, models",
                          "TOME_DATA_DIR", Path)
    db_url: str = _opt("", "SQLAlchemy URL of the database; empty: SQLite file tome.sqlite under data_dir",
                       "TOME_DB_URL")
    model: str = _opt("qwen", '"qwen" (embedded default), "smollm2" (embedded, fast), a hub id or a path',
                      "TOME_MODEL")
    models_dir: Path | None = _opt(None, "where prepared model copies live; default data_dir/models",
                                   "TOME_MODELS_DIR", Path)
    device: str = _opt("auto", '"auto", "cpu" or "cuda"', "TOME_DEVICE")
    dtype: str = _opt("auto", '"auto", "float32", "bfloat16" or "float16"', "TOME_DTYPE")
    pack_weights: bool = _opt(True, "lay the decoder's Linear weights out once for oneDNN where the model runs in "
                                    "bf16 on the CPU (uio/packed.py: decoding ~1.25x faster; the same numbers up to bf16 rounding)",
                              "TOME_PACK_WEIGHTS", _flag)
    shortlist_head: bool = _opt(True, "with packed weights, one row of the output head reads an int8 copy first, "
                                      "then exactly its 64 best logits and any other within the int8 error bound "
                                      "(uio/packed.py: the same greedy tokens, each "
                                      "~6 ms sooner for Qwen; costs the int8 copy's memory, ~270 MB for Qwen)",
                                "TOME_SHORTLIST_HEAD", _flag)
    segment_len: int = _opt(1024, "l: tokens per segment", "TOME_SEGMENT_LEN", int)
    ratio: int = _opt(8, "compression ratio of the memories: 8 (M=128 slots per segment) or 32 (M=32)",
                      "TOME_RATIO", int)
    compress: bool = _opt(True, "compress every ingested document into memories (compressed mode needs them)",
                          "TOME_COMPRESS", _flag)
    compressor: str = _opt("auto", "how segments become memories: auto (the measured default for the model: "
                                   "uio.compress.DEFAULTS) or a name of uio.compress.COMPRESSORS (kvzip, snapkv, "
                                   "keynorm, streaming, uio)", "TOME_COMPRESSOR")
    adapter: Path | None = _opt(None, ("UIO adapter file, for the ratio in its header; other ratios, and by "
                                       "default: the one shipped for the model and ratio"),
                                "TOME_ADAPTER", Path)
    compress_batch: int = _opt(4, "segments per UIO encoder batch")
    chunk_segments: int = _opt(16, "segments per saved chunk: an interrupted ingestion resumes from the last one",
                               "TOME_CHUNK_SEGMENTS", int)
    background_chunk_segments: int = _opt(1, "segments per saved chunk of background compression (stage 2); the "
                                             "worker holds the model lock one chunk at a time, so a question "
                                             "asked meanwhile waits at most this many segments' compression",
                                          "TOME_BACKGROUND_CHUNK_SEGMENTS", int)
    compress_stale_s: float = _opt(600.0, "a compression job whose worker has not reported for this long is taken "
                                          "again (its worker died); a dead local worker's job is taken at start-up",
                                   "TOME_COMPRESS_STALE_S", float)
    compress_attempts: int = _opt(3, "claims of one compression job before it is marked failed (a book that "
                                     "kills its worker must not take down the next one too)")
    compress_poll_s: float = _opt(5.0, "how often an idle background worker looks at the queue (an upload in "
                                       "the same process wakes it at once)", "TOME_COMPRESS_POLL_S", float)
    memory_budget: int = _opt(-1, "most memory slots a compressed answer attends to (best segments first); "
                                  "0: all that fit the window; -1 (auto): all on a GPU, on a CPU as many as keep "
                                  "the first token near a 1-page question's (uio.model.flat_ttft_slots)",
                              "TOME_MEMORY_BUDGET", int)
    # Both by measurement (docs/COMPRESSION.md, "Layout and positions"): on Qwen's planted facts the four
    # combinations answered alike (9-10 of 42), next-segment perplexity was lower with consecutive slots.
    # "auto" since the twenty-second run: "head" for Qwen (as many answers, ~29 prompt tokens fewer before the first
    # token), "before" for SmolLM2 and other models (tome.answer.LAYOUT_DEFAULTS).
    memory_layout: str = _opt("auto", 'where a compressed answer reads its memories: "auto" (the measured one for '
                                        'the model), "before" (before the chat prompt, which names the books), '
                                        '"head" (after the system message\'s instructions, read once for every '
                                        'question: uio/head_kv.py) or "inline" (inside the system message, each '
                                        "book's memories after its title, where uncompressed mode puts text)",
                              "TOME_MEMORY_LAYOUT")
    memory_positions: str = _opt("consecutive", 'positions of memory slots: "consecutive" (side by side) or '
                                                '"spaced" (each slot where its source token sat in the segment, '
                                                'scaled into the window where needed)', "TOME_MEMORY_POSITIONS")
    # By measurement (docs/COMPRESSION.md, "Seventh run"): on Qwen's planted facts 8x memories alone answered
    # 11/42, with the best passage 31/42 (full text 31/42; the passage alone 33/42), with two 30/42; the
    # passage's ~250 tokens are read at question time (first token ~1/8 of retrieval's).
    memory_excerpts: int = _opt(1, "compressed mode: this many of each chosen book's passages that retrieval finds "
                                   "best for the question (books: those of the best passages, up to "
                                   "context_books) go into the prompt as text beside the memories (0: memories "
                                   "alone); their words arrive exact where 1 slot in 8 may have dropped a digit "
                                   "or a name",
                                "TOME_MEMORY_EXCERPTS", int)
    memory_excerpt_unit: str = _opt("passage", 'what one excerpt of compressed mode is: "passage" (<= 200 word '
                                               'pieces, the best ones of all the books) or "page" (the page of '
                                               "each book's best passage, whole: each of the chosen books, up to "
                                               "context_books, gets memory_excerpts pages)",
                                    "TOME_MEMORY_EXCERPT_UNIT")
    # By measurement (docs/COMPRESSION.md, "Eleventh run"): on Qwen's 40 real-manual questions, the best passage
    # beside at most 256 memory slots answered 23/40, beside ~2,060 (the CPU budget) 19/40, at 2/3 of the
    # first token (SmolLM2's planted facts: 27/42 against 19/42 at its 768): small readers lose answers to
    # many slots of other pages.
    memory_excerpt_budget: int = _opt(256, "compressed mode with excerpts: most memory slots beside them (the "
                                          "segments closest to the question first; also below memory_budget); "
                                          "0: memory_budget alone decides", "TOME_MEMORY_EXCERPT_BUDGET", int)
    # By measurement (docs/COMPRESSION.md, "Fourteenth run"): re-cut, the passages held the answer for 62 of 80
    # real-manual questions instead of 59 (planted facts: 40 of 42 instead of 41), and the answers stayed level
    # (44/80, 50/80 at 256 tokens, planted 30/42 against 31/42): off until a reader turns it into answers.
    memory_excerpt_aim: bool = _opt(False, "compressed mode: each passage read as text is re-cut, at its length and "
                                          "on its page, to start just before the sentence sharing the most rare "
                                          "words with the question (the answer often follows the words that "
                                          "match; retrieval.aim)", "TOME_MEMORY_EXCERPT_AIM", _flag)
    memory_excerpt_scale: float = _opt(1.0, "compressed mode with memory_excerpt_aim: the re-cut passage's length as "
                                            "a share of the passage's (below 1: fewer tokens before the first token)",
                                       "TOME_MEMORY_EXCERPT_SCALE", float)
    memory_prompt: str = _opt("short", 'compressed mode with passages as text: "long" (the instructions, the '
                                       "books' names and a header before the passages) or \"short\" (one sentence, "
                                       "then the labelled passages: ~36 tokens fewer before the first token)",
                              "TOME_MEMORY_PROMPT")
    memory_excerpt_place: str = _opt("system", 'compressed mode: where the excerpts go, "system" (after the '
                                               'memory prompt) or "user" (in the question\'s message, before '
                                               "it: closer to the question)", "TOME_MEMORY_EXCERPT_PLACE")
    memory_skip_excerpted: bool = _opt(False, "compressed mode with excerpts: the memory slots go to segments "
                                              "other than those the excerpts come from (their text is read "
                                              "already), so the memories cover more of the book",
                                       "TOME_MEMORY_SKIP_EXCERPTED", _flag)
    # By measurement (docs/COMPRESSION.md, "Ninth run"): on Qwen's 32x pass keys, 16 segments that split one
    # budget kept the key at 18 of 20 positions (2K-32K) against 15 of 20 with each segment's own share.
    memory_share: int = _opt(16, "segments whose memories split one budget by their scores (KVzip and kvzip-fast: "
                                 "a page of filler gives slots to a dense one; 1: each segment keeps 1/ratio "
                                 "of itself); a document's slots stay 1/ratio of its tokens either way",
                             "TOME_MEMORY_SHARE", int)
    memory_dtype: str = _opt("16bit", 'how new memory files store keys and values: "16bit" (bf16 for a bf16 '
                                      'model, else fp16) or "int8" (KIVI-style: keys per channel, values per '
                                      'token; about half the bytes, docs/COMPRESSION.md); files of either load',
                             "TOME_MEMORY_DTYPE")
    memory_cache_mb: int = _opt(1024, "MB of documents' memories kept between questions (RAM, or GPU if used)",
                                "TOME_MEMORY_CACHE_MB", int)
    int8_ingest: bool = _opt(False, "CPU ingestion through an int8 copy of the model (faster; uio/quant.py)",
                             "TOME_INT8_INGEST", _flag)
    ray_address: str = _opt("", 'ingest over Ray: "local" (start one here), "auto" or ray://host:port; empty: off',
                            "TOME_RAY_ADDRESS")
    ray_actors: int = _opt(2, "Ray actors (one per GPU when the cluster has GPUs), each with model + adapter",
                           "TOME_RAY_ACTORS", int)
    context_budget: int = _opt(3072, "most document tokens put in the prompt (keeps a CPU answer interactive)",
                               "TOME_CONTEXT_BUDGET", int)
    context_books: int = _opt(2, "a question over several books gets context_budget per book, up to this many "
                                 "books' worth (both books' answering pages fit; docs/RESULTS.md)",
                              "TOME_CONTEXT_BOOKS", int)
    reread: bool = _opt(True, "an answer (either mode) that only restates the question is asked again over each "
                              "book's best-matching page alone, as text (compressed mode: only with memory_excerpts; "
                              "retrieval/narrow.py; docs/RESULTS.md, docs/COMPRESSION.md)",
                        "TOME_REREAD", _flag)
    confidence_floor: float = _opt(0.0, "mark an answer whose confidence (geometric mean of its token probabilities) "
                                        "is below this; 0: never (on Qwen2.5-0.5B it does not tell right from "
                                        "wrong, docs/RESULTS.md)", "TOME_CONFIDENCE_FLOOR", float)
    embedder: str = _opt("minilm", 'segment embedder: "minilm" (all-MiniLM-L6-v2, shipped in a wheel), a hub id '
                                   "or a path", "TOME_EMBEDDER")
    neighbours: int = _opt(0, "segments on each side of a retrieved one that come with it (where its best "
                              "passage touches that side), when they fit; 0: none (measured best, docs/RESULTS.md)",
                           "TOME_NEIGHBOURS", int)
    vector_index_min: int = _opt(100_000, "above this many segments (SQLite), search through the sqlite-vec index",
                                 "TOME_VECTOR_INDEX_MIN", int)
    max_new_tokens: int = _opt(256, "most tokens of an answer", "TOME_MAX_NEW_TOKENS", int)
    draft_tokens: int = _opt(8, "greedy answers: tokens drafted from the prompt and verified in each decoding "
                                "forward (uio/draft.py: the model's own picks in fewer forwards); 0: one token "
                                "a forward",
                             "TOME_DRAFT_TOKENS", int)
    cache_policy: str = _opt("auto", "policy for the recent (uncompressed) cache: auto (the Attention-Gate where "
                                     "one ships and is on by default, else full) or a name of uio.cache.POLICIES",
                             "TOME_CACHE_POLICY")
    cache_eviction: float = _opt(0.6, "share of recent tokens a policy drops (stored memories are never evicted)",
                                 "TOME_CACHE_EVICTION", float)
    max_file_mb: int = _opt(200, "largest file accepted for ingestion, in MB", "TOME_MAX_FILE_MB", int)
    threads: int = _opt(0, "torch intra-op threads; 0: torch's default", "TOME_THREADS", int)
    tune_malloc: bool = _opt(True, "glibc allocator tuning at start-up (uio/runtime.py)", "TOME_TUNE_MALLOC", _flag)
    host: str = _opt("127.0.0.1", "address the UI binds to", "TOME_HOST")
    port: int = _opt(7860, "port of the UI", "TOME_PORT", int)
    auth: str = _opt("", '"user:password" protects the UI; empty: no login (it binds to loopback by default)',
                     "TOME_AUTH")

    @property
    def db(self) -> str:
        return self.db_url or f"sqlite:///{(self.data_dir / 'tome.sqlite').resolve()}"

    @property
    def models_path(self) -> Path:
        return self.models_dir or self.data_dir / "models"

    @property
    def uploads_path(self) -> Path:
        return self.data_dir / "uploads"

    @property
    def memories_path(self) -> Path:
        return self.data_dir / "memories"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> "Config":
        """Defaults, then the ``TOME_*`` variables set in ``env`` (default: os.environ), then ``overrides``
        that are not None (command-line flags)."""
        env = os.environ if env is None else env
        values = {}
        for f in fields(cls):
            var = f.metadata.get("env")
            if var and env.get(var):
                values[f.name] = (f.metadata.get("parse") or str)(env[var])
        values.update({k: v for k, v in overrides.items() if v is not None})
        return replace(cls(), **values)

    @classmethod
    def help(cls) -> dict[str, str]:
        """{field name: help text (and its variable)}: what `app.py --help-config` and the docs print."""
        out = {}
        for f in fields(cls):
            var = f.metadata.get("env")
            out[f.name] = f.metadata["help"] + (f" [{var}]" if var else "")
        return out
