"""Shared fixtures: tiny random models for unit tests, the real models for integration tests,
and PDFs made on the spot. Prepared real models are cached in .cache/models between runs."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODELS_DIR = ROOT / ".cache" / "models"


def make_pdf(path: Path, pages: list[str], title: str | None = None) -> Path:
    """A real PDF with one text block per page (fpdf2, core Helvetica font)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=11)
    if title:
        pdf.set_title(title)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 6, text)
    pdf.output(str(path))
    return path


@pytest.fixture(scope="session")
def smollm2():
    from uio.model import load_model

    return load_model("smollm2", MODELS_DIR, device="cpu")


@pytest.fixture(scope="session")
def qwen():
    from uio.model import load_model

    return load_model("qwen", MODELS_DIR, device="cpu")


@pytest.fixture(scope="session")
def tokenizer(smollm2):
    """A real tokenizer with a chat template (SmolLM2's), shared by the tiny models."""
    return smollm2.tokenizer


def _tiny(kind: str, tokenizer):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    from uio.model import LoadedModel

    torch.manual_seed(0)
    common = dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                  bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    cfg = LlamaConfig(**common) if kind == "llama" else Qwen2Config(**common)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return LoadedModel(name=f"tiny-{kind}", model=model, tokenizer=tokenizer, device=torch.device("cpu"),
                       dtype=torch.float32)


@pytest.fixture(scope="session")
def tiny_llama(tokenizer):
    return _tiny("llama", tokenizer)


@pytest.fixture(scope="session")
def tiny_qwen(tokenizer):
    return _tiny("qwen2", tokenizer)


DATABASES = ["sqlite"] + (["postgresql"] if os.environ.get("TOME_TEST_PG") else [])


@pytest.fixture(params=DATABASES)
def db_url(request, tmp_path):
    """SQLite in the test's folder; also a real PostgreSQL (emptied first) when TOME_TEST_PG holds its URL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tome.sqlite'}"
        return
    from sqlalchemy import create_engine, text

    pg = os.environ["TOME_TEST_PG"]
    engine = create_engine(pg)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    yield pg


def make_tome(tmp_path, db_url, lm, **config):
    from tome import Config, Tome

    cfg = Config(data_dir=tmp_path / "data", db_url=db_url, models_dir=MODELS_DIR, **config)
    return Tome(cfg, lm=lm)


@pytest.fixture
def tome_tiny(tmp_path, db_url, tokenizer):
    """A Tome service on a fresh data dir with a fresh tiny Llama (answers are gibberish, flows are real).

    Small segments (64 tokens, 8x: 8 slots) so documents have several segments and chunks; each segment keeps
    its own budget (``memory_share=1``), so chunks hold the segments a test counts (sharing:
    tests/tome/test_memories.py).
    """
    t = make_tome(tmp_path, db_url, _tiny("llama", tokenizer), max_new_tokens=8, segment_len=64,
                  chunk_segments=2, context_budget=3072, memory_share=1)
    yield t
    t.store.close()


@pytest.fixture
def tome_smol(tmp_path, db_url, smollm2):
    t = make_tome(tmp_path, db_url, smollm2, model="smollm2", max_new_tokens=40)
    yield t
    t.store.close()


# A small randomised UIO adapter and its memories of three segments (one short), shared by the tests of
# memory files, cache assembly, the encoder and int8 ingestion.
CFG_SEGMENT_LEN, CFG_NUM_MEM = 64, 8
SEGMENTS = [list(range(100, 164)), list(range(300, 340)), list(range(500, 564))]


def uio_config():
    from uio.memory import MemoryConfig

    return MemoryConfig(segment_len=CFG_SEGMENT_LEN, num_mem=CFG_NUM_MEM)


@pytest.fixture(scope="module")
def adapter(tokenizer):
    from uio.adapter import UIOAdapter

    return UIOAdapter(_tiny("llama", tokenizer), uio_config()).randomize_(seed=3)


@pytest.fixture(scope="module")
def memory(adapter):
    from uio.encoder import Encoder

    return Encoder(adapter, batch_size=2).compress(SEGMENTS, token_spans=[(0, 64), (64, 104), (104, 168)])


def cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of every (layer, slot) vector of a vs b."""
    return torch.nn.functional.cosine_similarity(a.flatten(2).float(), b.flatten(2).float(), dim=-1)


# -- small fixtures shared by several test modules -------------------------------------------------------

MANUAL = [  # (page, text) of a small fixture for the two full-text engines
    (1, "Use read.table to read a data file into a data frame; read.csv is the same with commas."),
    (2, "The table of contents lists every chapter. Read it before the first chapter."),
    (3, "The prompt string PS1 is shown before each command; PS2 continues a line."),
    (4, "An ENOENT error means that no such file or directory exists."),
    (5, "Plotting: the plot command draws curves, and set terminal chooses the output format."),
]


def manual_store(url):
    """A store holding MANUAL as one document with one passage per page."""
    from retrieval.passages import PassageSpan
    from storage import Store
    from ingest.segments import Segment

    store = Store(url)
    segs = [Segment(i, t, p, p, 10 * i, 10 * i + 10) for i, (p, t) in enumerate(MANUAL)]
    doc = store.add_document(sha256="d" * 64, title="Manual", filename="m.pdf", kind="pdf", pages=5,
                             segments=segs)
    store.set_passages(doc.id, "none", [PassageSpan(i, i, p, 0, len(t), t) for i, (p, t) in enumerate(MANUAL)])
    return store, doc


@dataclass(frozen=True)
class Seg:
    """A stand-in segment for the selector and the search: index, size, pages, text."""
    index: int
    n: int
    page_start: int = 1
    page_end: int = 1
    text: str = ""

    @property
    def n_tokens(self) -> int:
        return self.n


TIDES = [f"Page {i}. " + "The tide came in over the rocks and the gulls rose from the wall. " * 12
         for i in range(1, 7)]


def tides_book(tmp_path, name="tides.pdf", pages=TIDES):
    """A six-page PDF of the same sentence: several segments and chunks with the tiny models."""
    return make_pdf(tmp_path / name, pages)


def files_of(tome):
    """Every file under the memory folder, relative."""
    root = tome.config.memories_path
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()) if root.exists() else []


def planted_code_document(tok) -> tuple[list[int], list[int]]:
    """~2K tokens of repeated filler with a 5-digit code in the second segment; the code's digit positions there."""
    filler = tok("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ",
                 add_special_tokens=False)["input_ids"]
    needle = tok(" The pass key is 71432. Remember it. 71432 is the pass key. ", add_special_tokens=False)["input_ids"]
    body = (filler * 200)[:2048 - len(needle)]
    doc = body[:1300] + needle + body[1300:]
    digits = [1300 - 1024 + i for i, t in enumerate(needle) if any(c.isdigit() for c in tok.decode([t]))]
    return doc, digits
