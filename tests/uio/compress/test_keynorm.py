"""Key-norm baseline: each head keeps the sinks and its smallest-norm keys, in document order."""
import torch

from uio.compress import make_compressor


def test_keeps_the_smallest_norm_keys_per_head(tiny_qwen):
    ids = torch.randint(100, 5000, (128,), generator=torch.Generator().manual_seed(1)).tolist()
    comp = make_compressor("keynorm", 4, store="model")  # 32 slots: 4 sinks (at most 1/8 of the budget)
    pre = comp.prefill(tiny_qwen, ids)
    mem = comp.compress(tiny_qwen, [ids])
    assert mem.slots == [32]
    norms = pre.keys.float().norm(dim=-1)  # (layers, n, kv)
    for layer in range(2):
        for head in range(2):
            rest = norms[layer, 4:, head]
            want = [0, 1, 2, 3] + sorted((rest.topk(28, largest=False).indices + 4).tolist())
            assert torch.equal(mem.keys[layer, :, head], pre.keys[layer, want, head])
