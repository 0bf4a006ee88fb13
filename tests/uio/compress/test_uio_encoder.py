"""The UIO encoder behind the compressor interface: same memories as Encoder, the adapter's fingerprint."""
import pytest
import torch

from tests.conftest import _tiny
from uio.compress import identity, make_compressor


def test_wraps_the_encoder_with_the_adapters_fingerprint(tokenizer):
    from uio.adapter import UIOAdapter
    from uio.encoder import Encoder
    from uio.memory import MemoryConfig

    lm = _tiny("llama", tokenizer)  # its own model: the adapter injects LoRA layers
    adapter = UIOAdapter(lm, MemoryConfig(segment_len=64, num_mem=8)).randomize_()
    segs = [list(range(100, 164)), list(range(200, 230))]
    comp = make_compressor("uio", 8, adapter=adapter)
    mem = comp.compress(lm, segs, segment_ids=[1, 2])
    ref = Encoder(adapter).compress(segs, segment_ids=[1, 2])
    assert mem.fingerprint == identity(comp, lm) == adapter.fingerprint
    assert mem.slots == ref.slots == [8, 8] and mem.ratio == 8  # the encoder's own slot rule: min(M, n)
    assert mem.keys.dtype == torch.float16
    torch.testing.assert_close(mem.keys.float(), ref.keys, atol=1e-2, rtol=1e-2)
    assert make_compressor("uio", 0, adapter=adapter).ratio == 8
    with pytest.raises(ValueError, match="8x, not 32x"):
        make_compressor("uio", 32, adapter=adapter)
    with pytest.raises(ValueError, match="needs a trained adapter"):
        make_compressor("uio", 8)
