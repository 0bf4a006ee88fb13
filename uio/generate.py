"""Streamed generation with the figures a user compares: time to first token, speed, tokens."""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
from transformers import (DynamicCache, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList,
                          TextIteratorStreamer)

from uio.cache.base import CachePolicy, PolicyCache, kv_bytes
from uio.cache.full import FullCache
from uio.draft import MAX_DRAFT, PromptLookup
from uio.model import LoadedModel
from uio.torch_thread import start_on_torch

# Under a cache policy the prompt is read this many tokens per forward, with eviction after each (so it also
# applies within very long prompts). Small chunks cost: on CPU 32-token chunks made the first token ~7x slower
# than one prefill (docs/GATE.md); a default prompt (context budget 3,072 + question) is one forward.
PREFILL_CHUNK = 4096
EVICT_EVERY = 32  # decoded tokens between evictions


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    prefix_len: int = 0  # cached positions before the prompt (memory slots)
    new_tokens: int = 0
    ttft_s: float = 0.0  # prompt prefill + first token
    total_s: float = 0.0
    prefill_s: float = 0.0  # the first forward: the prompt (after any cached prefix)
    first_decode_s: float = 0.0  # from the prefill's logits to the first token handed out
    first_token_at: float = 0.0  # perf_counter() when the first token came (callers measure end to end)
    stopped: bool = False  # the user stopped it
    policy: str = "full"  # the recent-cache policy's name (uio.cache.POLICIES)
    eviction_rate: float = 0.0  # share of the recent tokens' K/V no longer held at the end
    kv_bytes_held: list[int] = field(default_factory=list)  # per layer at the end, memories and pads included
    token_logprobs: list[float] = field(default_factory=list)  # log-probability of each token handed out
    drafted: int = 0  # tokens drafted from the prompt and read for verification (uio.draft)
    accepted: int = 0  # of them, those the model picked itself (handed out without a forward of their own)

    @property
    def confidence(self) -> float:
        """Geometric mean of the answer's token probabilities (1: every token certain; 0: no tokens)."""
        lp = self.token_logprobs
        return math.exp(sum(lp) / len(lp)) if lp else 0.0

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / self.ttft_s if self.ttft_s else 0.0

    @property
    def decode_tok_s(self) -> float:
        rest = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / rest if self.new_tokens > 1 and rest > 0 else 0.0

    def as_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "prefix_len": self.prefix_len, "new_tokens": self.new_tokens,
                "ttft_s": round(self.ttft_s, 3), "total_s": round(self.total_s, 3),
                "prefill_tok_s": round(self.prefill_tok_s, 1), "decode_tok_s": round(self.decode_tok_s, 1),
                "stopped": self.stopped, "policy": self.policy, "eviction_rate": round(self.eviction_rate, 4),
                "kv_bytes_held": sum(self.kv_bytes_held), "confidence": float(f"{self.confidence:.4g}"),
                "token_logprobs": [round(x, 3) for x in self.token_logprobs],
                "drafted": self.drafted, "accepted": self.accepted}


class _TimedStreamer(TextIteratorStreamer):
    """Notes when the first new token arrives and how many come (the text may lag a token)."""

    def __init__(self, tokenizer, stats: GenerationStats, start: float):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=None)
        self.stats, self.start = stats, start
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True  # the first put is the prompt itself
        else:
            if self.stats.new_tokens == 0:
                self.stats.first_token_at = time.perf_counter()
                self.stats.ttft_s = self.stats.first_token_at - self.start
            self.stats.new_tokens += value.numel()
        super().put(value)


class _LogProbs(LogitsProcessor):
    """Records the log-probability of each token ``generate`` picks (greedy or sampled).

    A processor sees a step's scores before the pick, the pick only in the next step's
    input ids: each call settles the previous step, ``finish`` the last one.
    """

    def __init__(self, out: list[float]):
        self.out, self.last = out, None

    def __call__(self, input_ids, scores):
        self._settle(input_ids[0, -1])
        self.last = torch.log_softmax(scores[0].float(), -1)
        return scores

    def _settle(self, token) -> None:
        if self.last is not None:
            self.out.append(float(self.last[int(token)]))
            self.last = None

    def finish(self, token) -> None:
        self._settle(token)


class _StopOnEvent(StoppingCriteria):
    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool,
                          device=input_ids.device)


@dataclass
class Generation:
    """Iterate to receive text pieces as they are decoded; ``stats`` is final once exhausted."""

    pieces: Iterator[str]
    stats: GenerationStats = field(default_factory=GenerationStats)

    def __iter__(self) -> Iterator[str]:
        return self.pieces


def split_chat(tokenizer, messages: list[dict], marker: str) -> list[list[int]]:
    """The chat prompt of ``messages`` as token ids, cut where ``marker`` stands in their text (markers dropped).

    Memories go into those cuts (``uio.decoder.build_context``); the last piece is the prompt that follows.
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return [tokenizer.encode(piece, add_special_tokens=False) for piece in text.split(marker)]


def _encode(lm: LoadedModel, messages: list[dict], prefix_len: int, max_new_tokens: int,
            prompt_ids: list[int] | None = None) -> tuple[list[int], GenerationStats]:
    """The chat prompt's token ids (``prompt_ids`` where given) and fresh stats; refuses what does not fit.

    Plain ints: the tensors are made on the torch thread, where every torch call of a question runs
    (``uio/torch_thread.py``)."""
    if prompt_ids is not None:
        ids = list(prompt_ids)
    else:
        ids = list(lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True)["input_ids"])
    stats = GenerationStats(prompt_tokens=len(ids), prefix_len=prefix_len)
    if prefix_len + stats.prompt_tokens + max_new_tokens > lm.window:
        raise ValueError(f"{prefix_len} cached positions + prompt of {stats.prompt_tokens} tokens + "
                         f"{max_new_tokens} new ones exceeds the model's window of {lm.window}")
    return ids, stats


def _streamed(lm: LoadedModel, stats: GenerationStats, stop: threading.Event | None,
              work: Callable[[_TimedStreamer, threading.Event], None], prefill_forwards: int = 1) -> Generation:
    """Run ``work(streamer, stop)`` on the torch thread; the Generation yields the streamer's text.

    The first ``prefill_forwards`` forwards of the model are the prompt's prefill (several when it is
    read in chunks); their span is ``stats.prefill_s``.
    """
    stop = stop or threading.Event()
    start = time.perf_counter()
    streamer = _TimedStreamer(lm.tokenizer, stats, start)
    failure: list[BaseException] = []
    forwards: list[float] = []  # start of the prefill's first forward and end of its last
    done = [0]  # forwards finished

    def before(_module, _args) -> None:
        if not forwards:
            forwards.append(time.perf_counter())

    def after(_module, _args, _output) -> None:
        done[0] += 1
        if done[0] == prefill_forwards:
            forwards.append(time.perf_counter())
            stats.prefill_s = forwards[1] - forwards[0]

    def run() -> None:
        hooks = [lm.model.register_forward_pre_hook(before), lm.model.register_forward_hook(after)]
        try:
            with torch.inference_mode():
                work(streamer, stop)
        except BaseException as e:  # re-raised in the consumer's thread
            failure.append(e)
        finally:
            for h in hooks:
                h.remove()
            streamer.end()
            if len(forwards) == 2 and stats.first_token_at:
                stats.first_decode_s = max(0.0, stats.first_token_at - forwards[1])

    def pieces() -> Iterator[str]:
        wait = start_on_torch(run, "tome-generate")  # the one torch thread: see uio/torch_thread.py
        completed = False
        try:
            for piece in streamer:
                if piece:
                    yield piece
            completed = True
        finally:
            if not completed:  # the consumer went away: don't generate for nobody
                stop.set()
            wait()
            stats.total_s = time.perf_counter() - start
            stats.stopped = stop.is_set() and not failure
        if failure:
            raise failure[0]

    return Generation(pieces(), stats)


def stream(lm: LoadedModel, messages: list[dict], policy: CachePolicy = FullCache(), past_key_values=None,
           prefix_len: int = 0, max_new_tokens: int = 256, temperature: float = 0.0,
           stop: threading.Event | None = None, chunk: int = PREFILL_CHUNK, evict_every: int = EVICT_EVERY,
           prompt_ids: list[int] | None = None, draft_tokens: int = 0) -> Generation:
    """Generate an answer to chat ``messages`` in a background thread, streaming its text, with the
    recent-cache ``policy`` (uio.cache) applied as the cache grows.

    ``past_key_values`` may hold ``prefix_len`` positions already (memories): the prompt then continues
    after them, and the policy never evicts them. The prompt is prefilled ``chunk`` tokens at a time and the
    policy evicts after each chunk and every ``evict_every`` decoded tokens. A policy that never evicts
    (FullCache) skips that machinery: HF ``generate`` reads the prompt in one prefill (same tokens).
    ``prompt_ids``: the prompt's tokens when part of the chat template is already in the cache (``split_chat``).
    ``draft_tokens``: greedy decoding verifies up to this many tokens drafted from the prompt per forward
    (``uio.draft``; not under a policy that cannot take tokens back, H2O); the full cache then goes through
    PolicyCache too.
    """
    if not 0 <= draft_tokens <= MAX_DRAFT:
        raise ValueError(f"draft_tokens must be between 0 and {MAX_DRAFT}, not {draft_tokens}")
    ids, stats = _encode(lm, messages, prefix_len, max_new_tokens, prompt_ids)
    stats.policy = policy.name
    drafting = draft_tokens > 0 and temperature <= 0 and policy.drafts
    if policy.fast_path and not drafting:
        return _generate(lm, ids, stats, past_key_values, prefix_len, max_new_tokens, temperature, stop)
    return _with_policy(lm, ids, stats, policy, past_key_values, prefix_len, max_new_tokens,
                        temperature, stop, chunk, evict_every, draft_tokens if drafting else 0)


def _generate(lm: LoadedModel, ids: list[int], stats: GenerationStats, past_key_values, prefix_len: int,
              max_new_tokens: int, temperature: float, stop: threading.Event | None) -> Generation:
    """Everything kept: HF ``generate`` on the whole prompt (one prefill)."""
    # generate() skips the input positions the cache already covers; placeholders stand for them.
    ids = [lm.tokenizer.pad_token_id] * prefix_len + ids
    sampling = {"do_sample": True, "temperature": temperature} if temperature > 0 else {"do_sample": False}
    kwargs = dict(max_new_tokens=max_new_tokens, pad_token_id=lm.tokenizer.pad_token_id, **sampling)
    if not sampling["do_sample"]:
        # The shipped generation configs carry sampling defaults; greedy must not warn about them.
        kwargs.update(temperature=None, top_p=None, top_k=None)

    def work(streamer: _TimedStreamer, stop: threading.Event) -> None:
        input_ids = torch.tensor([ids], dtype=torch.long, device=lm.device)
        # Our own cache object (what generate() would make) so that the bytes it holds can be reported.
        cache = past_key_values if past_key_values is not None else DynamicCache(config=lm.model.config)
        logprobs = _LogProbs(stats.token_logprobs)
        try:
            out = lm.model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                                    past_key_values=cache, **kwargs, streamer=streamer,
                                    logits_processor=LogitsProcessorList([logprobs]),
                                    stopping_criteria=StoppingCriteriaList([_StopOnEvent(stop)]))
            logprobs.finish(out[0, -1])
        finally:
            stats.kv_bytes_held = kv_bytes(cache, lm.model.config.num_hidden_layers)

    return _streamed(lm, stats, stop, work)


def _eos_ids(lm: LoadedModel) -> set[int]:
    eos = lm.model.generation_config.eos_token_id
    if eos is None:
        eos = lm.tokenizer.eos_token_id
    return set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}


def _with_policy(lm: LoadedModel, prompt: list[int], stats: GenerationStats, policy: CachePolicy,
                 past_key_values, prefix_len: int, max_new_tokens: int, temperature: float,
                 stop: threading.Event | None, chunk: int, evict_every: int, draft_tokens: int = 0) -> Generation:
    """The prompt in chunks through a PolicyCache, evicting after each chunk and every ``evict_every``
    decoded tokens. With ``draft_tokens`` (greedy only, a policy that can take tokens back) each decoding
    forward also reads up to that many tokens drafted from the prompt (``uio.draft``) and keeps those the model
    picks itself: the same greedy answer in fewer forwards."""
    eos = _eos_ids(lm)

    def pick(logits: torch.Tensor) -> torch.Tensor:
        if temperature > 0:
            token = torch.multinomial((logits.float() / temperature).softmax(-1), 1)[:, 0]
        else:
            token = logits.argmax(-1)
        stats.token_logprobs.append(float(torch.log_softmax(logits[0].float(), -1)[int(token)]))
        return token

    def work(streamer: _TimedStreamer, stop: threading.Event) -> None:
        ids = torch.tensor([prompt], dtype=torch.long, device=lm.device)
        pc = PolicyCache(lm.model, policy, past_key_values, prefix_len)
        streamer.put(ids.cpu())  # the prompt (the streamer skips it)
        try:
            for i in range(0, ids.shape[1], chunk):
                out = pc.forward(ids[:, i:i + chunk], logits_to_keep=1)
                if i + chunk < ids.shape[1] or max_new_tokens < 1:
                    pc.evict()
            logits, ready = out.logits[:, -1], []  # ready: drafted tokens the model picked, not handed out yet
            n = fed = 0  # tokens handed out; decoded tokens read by the model
            lookup: PromptLookup | None = None  # built after the first token, off its path (4 ms for 3K tokens)
            while True:
                token = pick(logits)
                streamer.put(token.cpu())
                n += 1
                if lookup is not None:
                    lookup.append(int(token))
                if n == 1:  # the prompt's last chunk: evicted once its first token is out (same cache after)
                    pc.evict()
                if int(token) in eos or stop.is_set() or n == max_new_tokens:
                    break
                if ready:  # the forward that read this token already gave the next one's logits
                    logits = ready.pop(0)
                    continue
                # a forward never reads past the next eviction point: evictions fall where they would
                # without drafts, so every token reads the cache it would read one token a forward
                room = min(draft_tokens, max_new_tokens - n - 1, evict_every - fed % evict_every - 1)
                draft = []
                if draft_tokens:
                    if lookup is None:  # the first decoding forward: only the first token is out
                        lookup = PromptLookup(prompt + [int(token)])
                    draft = lookup.draft(room)
                step = torch.tensor([[int(token)] + draft], dtype=torch.long, device=lm.device)
                out = pc.forward(step, logits_to_keep=step.shape[1])
                picked = out.logits[0, :len(draft)].argmax(-1).tolist()
                kept = next((j for j, (a, b) in enumerate(zip(picked, draft)) if a != b), len(draft))
                pc.truncate(len(draft) - kept)  # the drafts from the first one the model did not pick on
                stats.drafted += len(draft)
                stats.accepted += kept
                ready = [out.logits[:, j] for j in range(1, kept + 1)]
                logits = out.logits[:, 0]
                fed += 1 + kept
                if fed % evict_every == 0:
                    pc.evict()
        finally:
            stats.eviction_rate = pc.eviction_rate()
            stats.kv_bytes_held = pc.kv_bytes_held()

    return _streamed(lm, stats, stop, work, prefill_forwards=-(-len(prompt) // chunk))
