"""Mutated PDFs: ingestion either succeeds or says why in our own error, and never leaves half a book."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_pdf


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_pdfs_are_ingested_or_refused_cleanly(tome_tiny, tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("fuzz")
    seed = make_pdf(folder / "seed.pdf", ["Gulls over the harbour. " * 20, "The second page. " * 20])
    raw = bytearray(seed.read_bytes())
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "zero"]), label="kind")
        at = data.draw(st.integers(0, len(raw) - 1), label="at")
        if kind == "flip":
            raw[at] ^= data.draw(st.integers(1, 255), label="mask")
        elif kind == "cut":
            del raw[at:at + data.draw(st.integers(1, 400), label="len")]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=40), label="bytes")
        else:
            raw[at:at + 64] = bytes(min(64, len(raw) - at))
        if not raw:
            raw = bytearray(b"%PDF-")
    path = folder / "mutant.pdf"
    path.write_bytes(bytes(raw))
    before = {d.id for d in tome_tiny.documents()}
    r = tome_tiny.ingest(path)
    if r.ok:
        assert r.document.ready and r.document.pages >= 1
        if not r.duplicate:
            assert tome_tiny.store.memory_set(r.document.id, tome_tiny.memory_identity()) is not None
    else:
        assert r.error.startswith("mutant.pdf:")
        assert {d.id for d in tome_tiny.documents()} == before  # nothing new, nothing half-stored
    assert all(d.ready for d in tome_tiny.documents())
    assert tome_tiny.store.unfinished_documents() == []
