"""What the memory model is trained to do, as differentiable losses of one step.

- continuation: the frozen decoder's next-token loss on segment t+1 given
  the memories of segments <= t;
- auto-encoding: segment t re-read from its own memory alone;
- recall: a made-up fact planted in an earlier segment, asked about through
  the chat template after segment t; loss on the answer tokens only.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uio.decoder import cache_from
from uio.model import LoadedModel


def decoder_loss(lm: LoadedModel, keys: torch.Tensor, values: torch.Tensor, input_ids: torch.Tensor,
                 labels: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token loss of ``input_ids`` (B, n) read after memories (layers, B, slots, kv, hd).

    ``labels`` (B, n) with -100 where no loss is wanted; default: every next token.
    """
    m = keys.shape[2]
    cache = cache_from(lm, keys, values) if m else None
    n = input_ids.shape[1]
    pos = torch.arange(m, m + n, device=input_ids.device)
    out = lm.model(input_ids=input_ids, past_key_values=cache, position_ids=pos[None].expand(input_ids.shape[0], -1),
                   cache_position=pos, use_cache=cache is not None)
    targets = (input_ids if labels is None else labels)[:, 1:]
    logits = out.logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100)


@dataclass(frozen=True)
class RecallTask:
    """A fact to plant in the text and the chat turn that asks for it."""

    fact_ids: list[int]
    prompt_ids: list[int]  # chat-templated question, up to the assistant's turn
    answer_ids: list[int]

    def input_and_labels(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor(self.prompt_ids + self.answer_ids, device=device)
        labels = ids.clone()
        labels[:len(self.prompt_ids)] = -100
        return ids, labels


_NAMES = ["Varrow Point", "the Ashgrove mill", "Captain Orrin Hale", "the Tessel archive", "Marisol Quent",
          "the north gate of Brenn", "the ferry Calloway", "Doctor Ione Vasse", "the Pellam orchard"]


def make_recall_task(tokenizer, rng: random.Random) -> RecallTask:
    """A passkey-style fact with a 5-digit code, phrased the way a user would ask about it."""
    name, code = rng.choice(_NAMES), f"{rng.randrange(10000, 100000)}"
    fact = f" The secret code of {name} is {code}. Remember it. "
    question = [{"role": "user", "content": f"What is the secret code of {name}?"}]
    prompt = tokenizer.apply_chat_template(question, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"]
    answer = tokenizer(f"The secret code of {name} is {code}.", add_special_tokens=False)["input_ids"]
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    fact_ids = tokenizer(fact, add_special_tokens=False)["input_ids"]
    return RecallTask(fact_ids, list(prompt), answer + eos)


def plant(segment: list[int], fact: list[int], rng: random.Random) -> list[int]:
    """The segment with the fact written over a random stretch (length unchanged)."""
    if len(fact) >= len(segment):
        return fact[:len(segment)]
    at = rng.randrange(len(segment) - len(fact))
    return segment[:at] + fact + segment[at + len(fact):]
