"""Memory files: read through one memory map, equal to an eager read."""
import torch
from safetensors.torch import load as load_bytes
from uio.memory import Memory


def test_mmap_load_equals_eager_load(memory, tmp_path):
    path = tmp_path / "m.safetensors"
    memory.save(path)
    eager = load_bytes(path.read_bytes())  # the whole file read into RAM, then parsed
    mapped = Memory.load(path, expect_fingerprint=memory.fingerprint)
    assert torch.equal(mapped.keys, eager["keys"]) and torch.equal(mapped.values, eager["values"])
    assert torch.equal(mapped.keys, memory.keys) and torch.equal(mapped.values, memory.values)
    assert (mapped.segment_ids, mapped.slots, mapped.token_spans, mapped.ratio) == \
        (memory.segment_ids, memory.slots, memory.token_spans, memory.ratio)
    assert mapped.select(mapped.segment_ids) is mapped  # all segments in order: no gather copy


# -- int8 storage (KIVI-style: keys per channel, values per token) ------------------------------------------
def _qwen_like_memory(dtype=torch.bfloat16, slots=(128, 128, 37)):
    """Memories of the default Qwen's shape at 8x (24 layers cut to 4: 2 KV heads x 64 dims), with an
    outlier key channel and slot positions, as kvzip makes them."""
    g = torch.Generator().manual_seed(7)
    n = sum(slots)
    keys = torch.randn(4, n, 2, 64, generator=g)
    keys[..., 3] = keys[..., 3] * 4 + 30.0
    values = torch.randn(4, n, 2, 64, generator=g) * 0.5
    positions = torch.cat([torch.sort(torch.randperm(1024, generator=g)[:s]).values for s in slots])
    positions = positions.to(torch.int32)[None, :, None].expand(4, -1, 2).contiguous()
    spans, start = [], 0
    for s in slots:
        spans.append((start, start + s * 8))
        start += s * 8
    return Memory(keys.to(dtype), values.to(dtype), [0, 1, 2], list(slots), spans, "fp-kivi", 8, positions)


def test_int8_file_round_trip_within_half_a_step_at_about_half_the_bytes(tmp_path):
    from safetensors import safe_open

    mem = _qwen_like_memory()
    p16, p8 = tmp_path / "m16.safetensors", tmp_path / "m8.safetensors"
    mem.save(p16)
    mem.save(p8, storage="int8")
    assert (Memory.storage_of(p16), Memory.storage_of(p8)) == ("16bit", "int8")
    ratio = p8.stat().st_size / p16.stat().st_size
    # codes: 1 byte per element against 2; values' minimum and step: 4 bytes per 64 codes; int16 positions
    assert 0.50 < ratio < 0.56, ratio
    with safe_open(str(p8), framework="pt") as f:
        meta = f.metadata()
        raw = {k: f.get_tensor(k) for k in f.keys()}
    assert meta["storage"] == "int8" and meta["dtype"] == "bfloat16"
    assert raw["keys.codes"].dtype == raw["values.codes"].dtype == torch.uint8
    assert raw["keys.step"].shape == (4, 1, 2, 64)  # per (layer, kv head, channel), over all slots
    assert raw["values.step"].shape == (4, mem.num_slots, 2, 1)  # per (layer, slot, kv head)
    assert raw["positions"].dtype == torch.int16
    back = Memory.load(p8, expect_fingerprint="fp-kivi")  # the dtype it was quantised from
    assert back.keys.dtype == back.values.dtype == torch.bfloat16
    exact = Memory.load(p8, dtype=torch.float32)
    for name, x, y in (("keys", mem.keys, exact.keys), ("values", mem.values, exact.values)):
        err = (y - x.float()).abs()
        bound = raw[f"{name}.step"].float() * 0.5 * (1 + 1e-3) + 1e-6  # half a step, float32 rounding
        assert (err <= bound).all(), (name, float((err - bound).max()))
    # the steps are small against the data: keys (outlier channel included) and values within 1 %
    assert (exact.keys - mem.keys.float()).norm() / mem.keys.float().norm() < 1e-2
    assert (exact.values - mem.values.float()).norm() / mem.values.float().norm() < 1e-2
    assert torch.equal(back.positions, mem.positions) and back.positions.dtype == torch.int32
    assert (back.segment_ids, back.slots, back.token_spans, back.ratio, back.fingerprint) == \
        (mem.segment_ids, mem.slots, mem.token_spans, mem.ratio, mem.fingerprint)
    assert back.select([2]).num_slots == 37


def _parts(path):
    """A safetensors file as (header JSON parsed, tensor bytes)."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def test_16_bit_files_are_written_as_before_and_old_files_load_unchanged(memory, tmp_path):
    """The 16-bit path is byte-for-byte the format before int8 existed; such files load as they are."""
    import json

    from safetensors.torch import save_file

    mem = _qwen_like_memory(torch.float16)
    old = tmp_path / "old.safetensors"
    meta = {"format": "tome-memory-1", "fingerprint": mem.fingerprint, "ratio": str(mem.ratio),
            "segment_ids": json.dumps(mem.segment_ids), "slots": json.dumps(mem.slots),
            "token_spans": json.dumps(mem.token_spans)}
    save_file({"keys": mem.keys, "values": mem.values, "positions": mem.positions}, str(old), metadata=meta)
    new = tmp_path / "new.safetensors"
    mem.save(new)
    assert _parts(new) == _parts(old)  # same header (safetensors orders metadata keys at random) and data
    back = Memory.load(old)
    assert back.keys.dtype == torch.float16 and torch.equal(back.keys, mem.keys)
    assert torch.equal(back.values, mem.values) and torch.equal(back.positions, mem.positions)
    assert torch.equal(Memory.load(old, dtype=torch.float32).keys, mem.keys.float())
    # a file without positions (the UIO encoder's) too
    memory.save(tmp_path / "uio.safetensors")
    assert torch.equal(Memory.load(tmp_path / "uio.safetensors").values, memory.values)


def test_unknown_storage_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="storage"):
        _qwen_like_memory().save(tmp_path / "m.safetensors", storage="int4")
