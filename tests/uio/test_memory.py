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
