"""Where 32x slots go when a pass key sits at the start of a document (the depth-0 miss of kvzip-fast).

    .venv/bin/python bench/depth0_probe.py      # Qwen; prints digits kept per KV head, kvzip vs kvzip-fast

The first 1,024-token segment of a 2K pass-key document (seed 3) at depth 0 and 0.5 (at 0.5 the key
falls in the second segment: the row is the opening's share alone); docs/COMPRESSION.md quotes it.
"""
import torch
from bench.common import load_model
from bench.qa import passkey
from uio.compress import make_compressor
lm = load_model("qwen")
tok = lm.tokenizer
for depth in (0.0, 0.5):
    text, key = passkey.passkey_document(tok, 2048, depth, seed=3)
    ids = tok(text, add_special_tokens=False)["input_ids"][:1024]
    # positions of the key's digit tokens (Qwen: one token per digit)
    pieces = [tok.decode([t]) for t in ids]
    pos = [i for i in range(len(ids) - 4) if "".join(pieces[i:i + 5]).strip() == key]
    first = pos[0] if pos else None
    kp = list(range(first, first + 5)) if first is not None else []
    print(f"depth {depth} key {key} at tokens {kp} of {len(ids)}")
    for name in ("kvzip", "kvzip-fast"):
        c = make_compressor(name, 32)
        _, _, index = c.compress_one(lm, ids)
        L, H, k = index.shape
        kept = torch.zeros(L, H, len(ids), dtype=torch.bool)
        kept.scatter_(2, index.long().cpu(), True)
        per = kept[:, :, kp].sum(-1).float()  # digits kept per head
        print(f"  {name}: slots {k}, mean digits kept per head {per.mean():.2f}/5, heads with all 5: "
              f"{(per == 5).float().mean():.2f}, with none: {(per == 0).float().mean():.2f}; "
              f"first 32 tokens' share of slots {kept[:, :, :32].float().sum(-1).mean() / k:.2f}")
