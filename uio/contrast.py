"""Context-aware decoding: each answer token weighed against what the model says without the documents.

Shi et al. 2023 ("Trusting Your Evidence", arXiv 2305.14739): a small reader often answers from its prior
(a generic sentence, a neighbouring term it knows) although the context holds the answer. Contrasting the
next-token log-probabilities with context against those of the same question without it,
``(1 + alpha) * log p(y | context) - alpha * log p(y | question)``, favours what the context adds. Only
tokens the contextual model finds plausible (within ``plausibility`` of its best token's probability,
Li et al. 2023's constraint) may be picked, so the contrast never promotes a token nobody predicts.

The question-only stream has its own small cache: a prefill of the bare question when the first token is
chosen, then one token per step, the token the contextual stream picked.
"""
from __future__ import annotations

import math

import torch
from transformers import DynamicCache, LogitsProcessor

from uio.model import LoadedModel


class ContextContrast(LogitsProcessor):
    """Re-weighs each step's scores by the question-only stream's (``prompt_ids``: the bare question's chat
    prompt). Usable as a ``generate`` logits processor and by a hand-written decode loop alike."""

    def __init__(self, lm: LoadedModel, prompt_ids: list[int], alpha: float, plausibility: float = 0.1):
        if alpha <= 0:
            raise ValueError(f"alpha must be positive, not {alpha}")
        if not 0 < plausibility <= 1:
            raise ValueError(f"plausibility must be in (0, 1], not {plausibility}")
        self.lm, self.alpha, self.floor = lm, alpha, math.log(plausibility)
        self.prompt = torch.tensor([list(prompt_ids)], dtype=torch.long, device=lm.device)
        self.cache: DynamicCache | None = None

    def _free_logprobs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The question-only stream's next-token log-probabilities, after the token just picked."""
        if self.cache is None:
            self.cache = DynamicCache(config=self.lm.model.config)
            ids = self.prompt
        else:
            ids = input_ids[:, -1:].to(self.lm.device)
        out = self.lm.model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        return torch.log_softmax(out.logits[:, -1].float(), -1)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        free = self._free_logprobs(input_ids)
        lp = torch.log_softmax(scores.float(), -1)
        out = (1 + self.alpha) * lp - self.alpha * free
        implausible = lp < lp.max(-1, keepdim=True).values + self.floor
        return out.masked_fill(implausible, -math.inf).to(scores.dtype)
