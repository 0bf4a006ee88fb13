"""The UIO encoder never computes logits (its memories are hidden states)."""
from uio.encoder import Encoder
from tests.conftest import SEGMENTS


def test_encoder_never_computes_logits(adapter):
    calls = []
    h = adapter.lm.model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        Encoder(adapter).compress(SEGMENTS)
    finally:
        h.remove()
    assert calls == []
