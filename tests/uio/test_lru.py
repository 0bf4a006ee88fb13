"""The byte-bounded LRU that keeps loaded memories between questions."""
import torch
from tome import Config
from uio.lru import ByteLRU


def test_lru_evicts_least_recently_used_by_bytes():
    lru = ByteLRU(1000, size=lambda t: t.numel() * t.element_size())
    a, b, c = torch.zeros(100), torch.zeros(100), torch.zeros(50)  # 400, 400, 200 bytes
    lru.put("a", a)
    lru.put("b", b)
    assert lru.nbytes == 800 and lru.get("a") is a  # a is now the most recent
    lru.put("c", c)  # 1000 bytes: fits exactly
    assert lru.keys() == ["b", "a", "c"] and lru.nbytes == 1000
    lru.put("d", torch.zeros(25))  # 100 more bytes: the least recently used (b) goes
    assert lru.keys() == ["a", "c", "d"] and lru.nbytes == 700 and lru.get("b") is None
    lru.put("huge", torch.zeros(300))  # larger than the whole cache: not kept, nothing evicted for it
    assert "huge" not in lru and lru.keys() == ["a", "c", "d"]
    lru.put("a", torch.zeros(10))  # replacing a value re-counts its bytes
    assert lru.nbytes == 340 and lru.keys() == ["c", "d", "a"]


def test_memory_cache_is_configured_in_megabytes():
    assert Config.from_env({"TOME_MEMORY_CACHE_MB": "64"}).memory_cache_mb == 64
    assert Config.from_env({"TOME_INT8_INGEST": "1"}).int8_ingest is True
    assert Config.from_env({}).int8_ingest is False and not Config.from_env({}).ray_address
