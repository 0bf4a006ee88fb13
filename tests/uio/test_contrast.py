"""Context-aware decoding (uio/contrast.py): the contrast by hand, through both decode paths."""
import math

import pytest
import torch

from uio.contrast import ContextContrast
from uio.generate import stream

CONTEXT = [{"role": "system", "content": "The lantern hangs in the north tower, beside the bell."},
           {"role": "user", "content": "Where is the lantern?"}]
BARE = [{"role": "user", "content": "Where is the lantern?"}]


def _ids(lm, messages) -> torch.Tensor:
    return lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)["input_ids"]


def _by_hand(lm, steps: int, alpha: float | None, plausibility: float = 0.1) -> tuple[list[int], list[float]]:
    """Greedy tokens (and their contextual log-probabilities), the whole sequences re-read each step."""
    ctx, bare = _ids(lm, CONTEXT), _ids(lm, BARE)
    tokens, logps = [], []
    with torch.inference_mode():
        for _ in range(steps):
            lp = torch.log_softmax(lm.model(ctx).logits[0, -1].float(), -1)
            score = lp
            if alpha is not None:
                free = torch.log_softmax(lm.model(bare).logits[0, -1].float(), -1)
                score = (1 + alpha) * lp - alpha * free
                score[lp < lp.max() + math.log(plausibility)] = -math.inf
            token = int(score.argmax())
            tokens.append(token)
            logps.append(float(lp[token]))
            ctx = torch.cat([ctx, torch.tensor([[token]])], 1)
            bare = torch.cat([bare, torch.tensor([[token]])], 1)
    return tokens, logps


@pytest.mark.parametrize("policy", ["full", "streaming"])  # HF generate, and our own decode loop
def test_contrast_picks_what_the_formula_picks_on_both_decode_paths(tiny_llama, policy):
    from uio.cache import resolve_policy

    lm = tiny_llama
    contrast = ContextContrast(lm, _ids(lm, BARE)[0].tolist(), alpha=1.0)
    gen = stream(lm, CONTEXT, resolve_policy(policy, 0.0), max_new_tokens=6, contrast=contrast)
    text = "".join(gen)
    tokens, logps = _by_hand(lm, gen.stats.new_tokens, alpha=1.0)
    plain, _ = _by_hand(lm, 6, alpha=None)
    assert gen.stats.new_tokens == 6 and tokens != plain  # the contrast changed the answer
    assert text == lm.tokenizer.decode(tokens, skip_special_tokens=True)
    # the recorded probabilities stay the contextual model's own, of the tokens picked
    assert gen.stats.token_logprobs == pytest.approx(logps, abs=1e-3)


def test_only_plausible_tokens_survive_and_the_rest_is_the_formula(tiny_qwen):
    lm = tiny_qwen
    bare = _ids(lm, BARE)[0].tolist()
    scores = torch.randn(1, lm.model.config.vocab_size, generator=torch.Generator().manual_seed(3)) * 4
    out = ContextContrast(lm, bare, alpha=0.5, plausibility=0.2)(torch.tensor([[0]]), scores)
    lp = torch.log_softmax(scores, -1)
    with torch.inference_mode():
        free = torch.log_softmax(lm.model(torch.tensor([bare])).logits[0, -1].float(), -1)
    keep = lp[0] >= lp[0].max() + math.log(0.2)
    assert 0 < int(keep.sum()) < keep.numel()
    assert torch.isinf(out[0, ~keep]).all()
    assert torch.allclose(out[0, keep], (1.5 * lp[0] - 0.5 * free)[keep], atol=1e-4)


def test_bad_settings_are_refused(tiny_llama):
    with pytest.raises(ValueError, match="alpha"):
        ContextContrast(tiny_llama, [1, 2], alpha=0)
    with pytest.raises(ValueError, match="plausibility"):
        ContextContrast(tiny_llama, [1, 2], alpha=0.5, plausibility=0)
