"""StreamingLLM baseline: the sinks and the segment's most recent tokens, the same in every layer and head."""
import torch

from uio.compress import make_compressor


def test_keeps_sinks_and_the_tail(tiny_llama):
    ids = torch.randint(100, 5000, (100,), generator=torch.Generator().manual_seed(0)).tolist()
    comp = make_compressor("streaming", 2, store="model")
    pre = comp.prefill(tiny_llama, ids)
    mem = comp.compress(tiny_llama, [ids])
    keep = [0, 1, 2, 3] + list(range(54, 100))  # ceil(100 / 2) = 50 slots: 4 sinks + the 46 most recent
    assert mem.slots == [50]
    assert torch.equal(mem.keys, pre.keys[:, keep]) and torch.equal(mem.values, pre.values[:, keep])
