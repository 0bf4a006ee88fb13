"""Ingestion spread over Ray actors makes the same memories as one process (local Ray, two CPU actors)."""
from dataclasses import replace

import pytest
import torch

ray = pytest.importorskip("ray")

from tests.conftest import _tiny, make_pdf, make_tome  # noqa: E402
from tome import Tome  # noqa: E402
from uio.adapter import UIOAdapter  # noqa: E402
from uio.encoder import Encoder  # noqa: E402
from uio.memory import MemoryConfig  # noqa: E402

SEGMENTS = [list(range(100 + 7 * i, 164 + 7 * i)) for i in range(5)] + [list(range(900, 930))]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_actors_make_the_memories_of_single_process_ingestion(local_ray, tokenizer):
    from uio.ray_pool import RayPool

    adapter = UIOAdapter(_tiny("llama", tokenizer), MemoryConfig(segment_len=64, num_mem=8)).randomize_(seed=5)
    spans = [(64 * i, 64 * i + len(s)) for i, s in enumerate(SEGMENTS)]
    pool = RayPool.start(adapter, actors=2, batch_size=2)
    try:
        seen = []
        got = pool.compress(SEGMENTS, segment_ids=list(range(10, 16)), token_spans=spans,
                            progress=lambda done, total: seen.append((done, total)))
        per_actor = pool.batches_per_actor()
    finally:
        pool.close()
    ref = Encoder(adapter, batch_size=2).compress(SEGMENTS, segment_ids=list(range(10, 16)), token_spans=spans)
    assert per_actor == [2, 1] and seen[-1] == (6, 6) and len(seen) == 3  # three batches of two
    assert (got.segment_ids, got.slots, got.token_spans, got.fingerprint) == \
        (ref.segment_ids, ref.slots, ref.token_spans, ref.fingerprint)
    assert torch.allclose(got.keys, ref.keys, atol=1e-5) and torch.allclose(got.values, ref.values, atol=1e-5)


def test_service_ingests_through_ray_and_answers_from_those_memories(local_ray, tmp_path, tokenizer):
    pages = [f"Page {i}. " + "The ferry leaves the north harbour at dawn with the salt and the post. " * 14
             for i in range(1, 5)]
    pdf = make_pdf(tmp_path / "ferry.pdf", pages)
    db = f"sqlite:///{tmp_path / 'ray.sqlite'}"
    t = make_tome(tmp_path / "a", db, _tiny("llama", tokenizer), segment_len=64, compress_batch=2,
                  max_new_tokens=4, ray_address="local", ray_actors=2, compressor="uio")  # Ray serves the UIO encoder
    try:
        r = t.ingest(pdf)
        assert r.ok, r.error
        assert sum(t.memories.encoder(t.models.compressor()).batches_per_actor()) >= 2  # the actors did the work
        spread = t.memory(r.document)
        # the same model and adapter in one process, on its own data dir
        one = Tome(replace(t.config, data_dir=tmp_path / "b", db_url="", ray_address=""), lm=t.lm, adapter=t.adapter)
        single = one.memory(one.ingest(pdf).document)
        one.store.close()
        assert spread.segment_ids == single.segment_ids and len(spread.segment_ids) >= 3
        assert spread.token_spans == single.token_spans and spread.fingerprint == single.fingerprint
        assert torch.allclose(spread.keys, single.keys, atol=1e-5)
        assert torch.allclose(spread.values, single.values, atol=1e-5)
        assert list(t.ask([r.document.id], "When does the ferry leave?", mode="compressed"))[-1].done
    finally:
        t.store.close()


def test_an_actor_rebuilds_a_memory_mode_adapter_with_its_mode_and_base(tokenizer):
    """The actor body (no Ray needed) gets the adapter's mode and base: without them a memory-mode adapter's
    fingerprint differs and the actor refuses it."""
    from uio.ray_pool import Compressor

    lm = _tiny("llama", tokenizer)
    adapter = UIOAdapter(lm, MemoryConfig(segment_len=64, num_mem=8), mode="memory", base="kvzip").randomize_(seed=3)
    args = (lm, None, "auto", adapter.config.to_json(), adapter.state_dict(), adapter.fingerprint, False, 2)
    actor = Compressor(*args, adapter.mode, adapter.base)
    got = actor.compress(SEGMENTS[:2], [0, 1], [(0, 64), (64, 128)])
    ref = Encoder(adapter, batch_size=2).compress(SEGMENTS[:2], [0, 1], [(0, 64), (64, 128)])
    assert got.fingerprint == adapter.fingerprint and torch.allclose(got.keys, ref.keys, atol=1e-5)
    from uio.memory import MemoryMismatch

    with pytest.raises(MemoryMismatch):
        Compressor(*args)  # as before: rebuilt in full mode, another fingerprint
