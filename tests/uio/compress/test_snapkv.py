"""SnapKV baseline: scores from the segment's last window of queries, checked against eager attention."""
import torch
import torch.nn.functional as F

from uio.compress import make_compressor


def test_scores_equal_direct_window_attention(tiny_qwen):
    lm = tiny_qwen
    ids = torch.randint(100, 5000, (60,), generator=torch.Generator().manual_seed(2)).tolist()
    comp = make_compressor("snapkv", 8, window=16, kernel=5)
    pre = comp.prefill(lm, ids)
    scores = comp.score(lm, pre)
    assert scores.shape == (2, 2, 60)
    previous = lm.model.config._attn_implementation
    lm.model.config._attn_implementation = "eager"
    try:
        with torch.inference_mode():
            att = lm.model(torch.tensor([ids]), output_attentions=True).attentions
    finally:
        lm.model.config._attn_implementation = previous
    for layer, a in enumerate(att):
        w = a[0, :, -16:, :44].float().mean(1)  # (H, 44): the window's mean attention on earlier tokens
        w = F.avg_pool1d(w[:, None], 5, stride=1, padding=2)[:, 0]
        want = w.view(2, 2, 44).mean(1)
        torch.testing.assert_close(scores[layer, :, :44], want, atol=1e-6, rtol=1e-5)
    # the window ranks above every earlier token, later window tokens first
    assert (scores[..., 44:].amin(-1) > scores[..., :44].amax(-1)).all()
    assert (scores[..., 45:] > scores[..., 44:59]).all()


def test_short_segment_window_is_half_the_segment(tiny_qwen):
    comp = make_compressor("snapkv", 8)
    assert comp.window_for(1024) == 64 and comp.window_for(40) == 20 and comp.window_for(1) == 1
    mem = comp.compress(tiny_qwen, [list(range(100, 140)), [7]])
    assert mem.slots == [5, 1]
