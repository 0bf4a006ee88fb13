"""Linear weights laid out once for oneDNN's CPU kernels (bf16): faster short prefills and decoding.

``F.linear`` on a bf16 CPU tensor goes to oneDNN, which reorders the plain (out, in) weight into its blocked
layout on every call. For a decoder's ~170 matrix products per forward that reorder is a fixed cost per
call: it dominates a decoding step (one row) and weighs on compressed mode's ~300-token prefill, while a
3,000-token prefill hardly notices it. ``torch.ops.mkldnn._reorder_linear_weight`` (the op torch's own
compiler uses when it freezes weights) does the reorder once; ``_linear_pointwise`` then multiplies with the
stored layout. The results are ``F.linear``'s: bitwise for most row counts; for some shapes oneDNN picks
another kernel and bf16 rounding differs, as with another thread count (of 170 real-manual answers 156 came
back word for word, the grades 92 against 91). On float32 the kernels were no faster
(``bench/packed_linear.py``), so only bf16 models are packed.

The output head is not packed (its weight may be the input embedding's too, and a packed copy would hold
another 272 MB for Qwen): for one row (every decoding step, and a prefill's last position) it multiplies with
``torch.mv`` instead of ``F.linear`` (``RowHead``), which skips oneDNN's per-call reorder of the whole vocabulary
matrix: 16 ms -> 10 ms per token for Qwen on two threads, bitwise the same logits (checked on both models).
``shortlist_head`` (``Config.shortlist_head``) halves what one row reads again: an int8 copy ranks the vocabulary,
and the 64 best logits, with every other one that its int8 error bound lets reach them, are read exactly
(``RowHead``), so greedy tokens stay the same. For Qwen, in pairs on
40 real-manual questions: the first token 252 -> 243 ms, 24-token answers 884 -> 826 ms, every answer the same;
the process holds 270 MB more (2,404 -> 2,674 MB).

A packed layer keeps no plain weight (its memory stays the same): reading ``.weight`` gives a fresh plain
copy (the model fingerprint's sample, PEFT's shape checks), a deep copy is a plain ``nn.Linear`` (the int8
encoder's float copy), and moving or converting it is refused with the way out (``unpack_linears``).
"""
from __future__ import annotations

import copy
import logging
import warnings
from typing import NamedTuple

import torch
from torch import nn

log = logging.getLogger(__name__)

BATCH_HINT = 1024  # rows oneDNN lays the weight out for; any row count works (bench/packed_linear.py)


def packable(model: nn.Module) -> bool:
    """Whether ``model``'s Linear layers can be packed here: bf16 on the CPU, with oneDNN built in."""
    try:
        param = next(model.parameters())
    except StopIteration:
        return False
    if param.device.type != "cpu" or param.dtype != torch.bfloat16 or not torch.backends.mkldnn.is_available():
        return False
    try:
        torch.ops.mkldnn._reorder_linear_weight  # noqa: B018 - resolves the op, or raises where it is missing
    except (AttributeError, RuntimeError):
        return False
    return True


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` (PEFT and int8 quantisation still recognise it) whose weight oneDNN laid out once."""

    def __init__(self, linear: nn.Linear, hint: int = BATCH_HINT):
        nn.Module.__init__(self)  # not nn.Linear's: it would allocate a second weight
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.bias = linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), hint)

    @property
    def weight(self) -> torch.Tensor:
        """A plain copy of the weight (reading it is rare: fingerprints, shapes)."""
        return self.packed.to_dense()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    def plain(self) -> nn.Linear:
        """The same layer as a plain ``nn.Linear`` (its own weight tensor, the same bias)."""
        with torch.device("meta"):
            lin = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        lin.weight = nn.Parameter(self.packed.to_dense(), requires_grad=False)
        lin.bias = self.bias
        return lin

    def __deepcopy__(self, memo: dict) -> nn.Linear:
        # oneDNN's opaque tensor has no storage to copy: a copy is made for another use (a float32 copy to
        # quantise), so it gets the plain layer
        lin = self.plain()
        if self.bias is not None:
            lin.bias = copy.deepcopy(self.bias, memo)
        return lin

    def _apply(self, fn, recurse: bool = True):
        raise TypeError("a packed Linear cannot be moved or converted; call uio.packed.unpack_linears(model) "
                        "first")

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, packed for oneDNN"


class RowHead(nn.Linear):
    """The output head: ``torch.mv`` for one row (no oneDNN reorder of the vocabulary matrix), ``F.linear``
    otherwise. Made by swapping the class of the model's own head, so a weight shared with the input embedding
    stays shared.

    With ``shortlist_head`` one row reads an int8 copy of the matrix first (fbgemm: half the bytes, ~5 of
    ~11 ms for Qwen's 151,936 x 896 on two threads), then the ``SHORTLIST`` highest logits exactly from the
    weight (``torch.mv`` of those rows gives the bits the whole product gives). Each int8 logit's error has a
    bound (``_bound_terms``); every logit outside the shortlist whose bound reaches the best exact one is read
    exactly too (none for ~80 % of Qwen's rows, a few hundred at most for most others; the whole product
    where more than ``RIVALS_MAX``). So the row's argmax is the exact product's, ties included, and greedy
    answers do not change; the other logits are the int8 copy's (within ~0.2 of the exact ones, an error that
    moves a softmax figure in its fourth decimal)."""

    _int8: Int8Head | None = None  # the int8 copy (``shortlist_head``), or None: every row exact

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() == self.in_features:  # one row, whatever the leading dims
            row = x.reshape(-1)
            out = self._shortlisted(row) if self._int8 is not None else None
            if out is None:
                out = torch.mv(self.weight, row)
            if self.bias is not None:
                out = out + self.bias
            return out.view(*x.shape[:-1], self.out_features)
        return nn.functional.linear(x, self.weight, self.bias)

    def _shortlisted(self, row: torch.Tensor) -> torch.Tensor | None:
        """The row's logits: exact for the shortlist and for every logit whose int8 value could reach the best
        of them, the int8 copy's elsewhere; None where too many could (the caller reads the whole product)."""
        packed, residual, norm = self._int8
        x = row.float()
        approx = torch.ops.quantized.linear_dynamic(x[None], packed, True)[0]
        best = approx.topk(SHORTLIST).indices
        exact = torch.mv(self.weight.index_select(0, best), row)
        top = float(exact.max())
        a, b = _bound_terms(x)
        reach = approx + residual * a  # where each logit could be at most
        reach.add_(norm, alpha=b)
        reach[best] = float("-inf")
        # a logit below top by more than two bf16 steps of top stays below it once rounded
        rivals = (reach >= top - abs(top) * 2 ** -7 - 1e-3).nonzero().flatten()
        if rivals.numel() > RIVALS_MAX:
            return None
        approx[best] = exact.float()
        if rivals.numel():
            approx[rivals] = torch.mv(self.weight.index_select(0, rivals), row).float()
        return approx.to(self.weight.dtype)

    def _apply(self, fn, recurse: bool = True):
        self._int8 = None  # moved or converted: the int8 copy no longer follows the weight
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        state = super().__getstate__().copy()  # copies and pickles (a Ray worker) leave the int8 copy out
        state.pop("_int8", None)
        return state


SHORTLIST = 64  # logits of one row read exactly from the weight, after the int8 copy ranked them
RIVALS_MAX = 8192  # logits outside the shortlist read exactly before the whole product is cheaper to read


class Int8Head(NamedTuple):
    """The output head's int8 copy: fbgemm's packed matrix, and per row the L2 norms of the rounding residual
    (weight - int8 x scale) and of the int8 row (x scale), which bound each logit's error."""
    packed: torch.Tensor
    residual: torch.Tensor
    norm: torch.Tensor


def _bound_terms(x: torch.Tensor) -> tuple[float, float]:
    """(a, b) such that each int8 logit of the float row ``x`` lies within ``residual x a + norm x b`` of the
    exact product. The product reads the weight's rounding ``r`` against ``x`` and the int8 row ``q`` against
    fbgemm's rounding ``d`` of ``x``: |r.x + q.d| <= |r| |x| + |q| |d| (Cauchy-Schwarz). fbgemm rounds ``x`` to
    128 levels between min(x, 0) and max(x, 0) (7 bits, ``reduce_range``), at most half a level from each
    value, so |d| <= sqrt(n) x range / 254. On Qwen's hidden states the errors measured stay under a fifth of
    this bound."""
    spread = max(float(x.max()), 0.0) - min(float(x.min()), 0.0)
    return float(x.norm()), x.numel() ** 0.5 * spread / 254 * 1.01


def shortlist_head(model: nn.Module) -> bool:
    """Give a ``RowHead`` its int8 copy (fbgemm, ``Int8Head``), built 8,192 rows at a time; False where fbgemm
    is missing or the head is not a ``RowHead`` without bias. Costs the int8 copy's memory (136 MB for
    Qwen2.5-0.5B, and as much again for fbgemm's own copy of it: the process held 270 MB more)."""
    head = _head(model)
    fbgemm = "fbgemm" in torch.backends.quantized.supported_engines
    if type(head) is not RowHead or head.bias is not None or not fbgemm:
        return False
    weight = head.weight.detach()
    rows = weight.shape[0]
    scales = torch.empty(rows, dtype=torch.double)
    values = torch.empty(weight.shape, dtype=torch.int8)
    residual, norm = torch.empty(rows), torch.empty(rows)
    for start in range(0, rows, 8192):
        w = weight[start:start + 8192].float()
        scale = (w.abs().amax(1) / 127).clamp_min(1e-12)  # one scale per row: per output channel
        q = torch.round(w / scale[:, None]).clamp_(-127, 127)
        scales[start:start + 8192] = scale
        values[start:start + 8192] = q.to(torch.int8)
        q.mul_(scale[:, None])
        norm[start:start + 8192] = q.norm(dim=1)
        residual[start:start + 8192] = (w - q).norm(dim=1)
    previous = torch.backends.quantized.engine
    try:
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():  # quantized tensors are announced for removal; torch 2.13 has them
            warnings.simplefilter("ignore")
            q = torch._make_per_channel_quantized_tensor(values, scales, torch.zeros(rows, dtype=torch.long), 0)
            head._int8 = Int8Head(torch.ops.quantized.linear_prepack(q, None), residual, norm)
    finally:
        torch.backends.quantized.engine = previous
    return True


def _head(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if get is not None else None
    return head if isinstance(head, nn.Linear) else None


def _linears(model: nn.Module, kind: type) -> list[tuple[nn.Module, str, nn.Module]]:
    """(parent, attribute, layer) for every ``kind`` layer of the decoder stack (not the output head, which may
    share its weight with the input embedding; it runs on one row per prefill), LoRA's own layers left out."""
    layers = getattr(getattr(model, "model", model), "layers", None)
    if layers is None:
        return []
    return [(parent, name, child) for path, parent in layers.named_modules() if "lora_" not in path
            for name, child in parent.named_children() if type(child) is kind]


def pack_linears(model: nn.Module, hint: int = BATCH_HINT) -> int:
    """Pack the decoder layers' Linear layers of a bf16 CPU ``model`` in place, and give its output head
    ``RowHead``'s one-row product; how many layers were packed (0 where ``packable`` says no, or for a model
    without a ``layers`` stack)."""
    if not packable(model):
        return 0
    found = _linears(model, nn.Linear)
    for parent, name, child in found:
        setattr(parent, name, PackedLinear(child, hint))
    head = _head(model)
    if head is not None and type(head) is nn.Linear:
        head.__class__ = RowHead
    log.debug("packed %d Linear layers for oneDNN", len(found))
    return len(found)


def unpack_linears(model: nn.Module) -> int:
    """Undo ``pack_linears``: plain Linear layers again (before training, moving or converting the model)."""
    found = _linears(model, PackedLinear)
    for parent, name, child in found:
        setattr(parent, name, child.plain())
    head = _head(model)
    if type(head) is RowHead:
        vars(head).pop("_int8", None)  # the int8 copy's memory goes with it
        head.__class__ = nn.Linear
    return len(found)


def packed_numel(model: nn.Module) -> int:
    """Weights held packed (they are not among ``model.parameters()``)."""
    return sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, PackedLinear))
