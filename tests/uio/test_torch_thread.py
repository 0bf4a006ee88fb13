"""Where torch runs (uio/torch_thread.py): a question's torch work on the one tome-torch thread, compression in a
thread that ends with it. Why: every thread that ran torch keeps an OpenMP team, and two teams on two cores made
a 300-token prefill 28 % slower (bench/omp_teams.py)."""
import threading

import pytest
import torch

from tests.conftest import make_pdf
from uio.torch_thread import on_torch_thread, run_in_own_thread, run_on_torch, start_on_torch

PAGES = [f"Page {i}. " + "The keeper lit the lamp at dusk and the ships passed the point. " * 10 for i in range(1, 5)]


def _name() -> str:
    return threading.current_thread().name


def test_run_on_torch_runs_there_returns_and_raises_here():
    assert not on_torch_thread()
    name = run_on_torch(_name)
    assert name.startswith("tome-torch") and run_on_torch(_name) == name  # one long-lived thread
    assert run_on_torch(lambda a, b=0: a + b, 2, b=3) == 5
    with pytest.raises(KeyError, match="gone"):
        run_on_torch(lambda: {}["gone"])
    # from the torch thread itself a call runs inline (queued, it would wait for itself)
    assert run_on_torch(lambda: (on_torch_thread(), run_on_torch(_name))) == (True, name)


def test_start_on_torch_waits_on_demand_and_falls_back_to_a_named_thread_from_inside():
    seen = []
    wait = start_on_torch(lambda: seen.append(_name()), "tome-generate")
    wait()
    assert seen[0].startswith("tome-torch")

    def inside():
        wait_inner = start_on_torch(lambda: seen.append(_name()), "tome-generate")
        wait_inner()

    run_on_torch(inside)
    assert seen[1] == "tome-generate"


def test_run_in_own_thread_uses_a_new_thread_each_time():
    names = [run_in_own_thread(lambda: (_name(), threading.get_ident()), name="job") for _ in range(2)]
    assert [n for n, _ in names] == ["job", "job"] and names[0][1] != threading.get_ident()
    with pytest.raises(ValueError, match="bad"):
        run_in_own_thread(lambda: (_ for _ in ()).throw(ValueError("bad")))


def _first_layer(tome):
    from uio.adapter import body

    return body(tome.lm).layers[0]  # every forward passes it: generation's and the compressors'


def test_a_question_runs_its_torch_work_on_the_torch_thread_and_compression_elsewhere(tome_tiny, tmp_path):
    forwards: list[str] = []
    hook = _first_layer(tome_tiny).register_forward_pre_hook(lambda *_: forwards.append(_name()))
    try:
        doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
        tome_tiny.memory(doc)  # made at ingestion: in a thread that ends with the job
        made = set(forwards)
        forwards.clear()
        final = list(tome_tiny.ask([doc.id], "Who lit the lamp?", mode="compressed", max_new_tokens=3))[-1]
        asked = set(forwards)
    finally:
        hook.remove()
    assert made == {"tome-compress-job"}
    assert len(asked) == 1 and asked.pop().startswith("tome-torch") and final.stats["memory_slots"] > 0
    assert tome_tiny.retriever.embedder.run is run_on_torch  # the question's embedding goes there too


def test_compression_stays_in_the_thread_that_holds_the_model_lock(tome_tiny, tmp_path):
    # run_in_own_thread would wait for the lock this thread holds: a deadlock
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    seen: list[str] = []
    hook = _first_layer(tome_tiny).register_forward_pre_hook(lambda *_: seen.append(_name()))
    try:
        with tome_tiny.models.lock:
            assert tome_tiny.models.lock.owned()
            mem = tome_tiny.memory(doc, compressor="snapkv")  # not made at ingestion: made now
    finally:
        hook.remove()
    assert mem.num_slots > 0 and set(seen) == {threading.current_thread().name}
    assert not tome_tiny.models.lock.owned()


def test_set_threads_reaches_the_torch_thread():
    from uio.runtime import set_threads

    before = torch.get_num_threads()
    try:
        set_threads(1)
        assert run_on_torch(torch.get_num_threads) == 1 == torch.get_num_threads()
    finally:
        set_threads(before)
    assert run_on_torch(torch.get_num_threads) == before



def _aten_ops_here(run) -> list[str]:
    """The aten operators ``run()`` executes in this thread (torch's profiler records the thread that starts it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    return [e.name for e in prof.events() if e.name.startswith("aten::")]


@pytest.mark.parametrize("mode", ["compressed", "uncompressed"])
def test_no_torch_operator_of_a_question_runs_in_the_callers_thread(tome_tiny, tmp_path, mode):
    # The hook test above sees only the model's forwards; this sees every torch call (embedding, vector search,
    # memory loading, assembly, sampling): a new one made in the caller's thread, which would bring back a
    # second OpenMP team, fails here although a tiny model never starts a team.
    doc = tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)).document
    tome_tiny.memory(doc)
    tome_tiny.memories.clear()  # the question loads the memory file itself
    assert "aten::sum" in _aten_ops_here(lambda: torch.ones(2).sum())  # the profiler sees this thread's calls
    final = []
    assert _aten_ops_here(lambda: final.extend(tome_tiny.ask([doc.id], "Who lit the lamp?", mode=mode,
                                                             max_new_tokens=3))) == []
    assert final[-1].done and final[-1].context_tokens > 0


def test_a_uio_adapter_is_loaded_on_the_torch_thread(tome_tiny):
    assert 8 not in tome_tiny.models._adapters
    assert _aten_ops_here(lambda: tome_tiny.models.adapter_for(8)) == []  # LoRA injection: torch work
    assert tome_tiny.models.adapter_for(8).config.ratio == 8


def test_no_torch_operator_of_an_upload_runs_in_the_callers_thread(tome_tiny, tmp_path):
    # stage 1 (pages, segments, embeddings) and the memories made at ingestion: embedding batches go to the
    # torch thread, compression to a thread of its own. The first upload imports modules that make a few
    # tensors at import time (peft, transformers' trainer utilities): the second one is watched.
    assert tome_tiny.ingest(make_pdf(tmp_path / "first.pdf", PAGES[:2])).ok
    done = []
    assert _aten_ops_here(lambda: done.append(tome_tiny.ingest(make_pdf(tmp_path / "lamp.pdf", PAGES)))) == []
    assert done[0].ok and tome_tiny.memory(done[0].document).num_slots > 0
