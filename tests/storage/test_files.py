"""Memory files are checksummed once per process per file version; corruption is caught on first load."""
import os
import pytest
from storage import CorruptMemory, MemoryFiles
from storage.files import forget_verified, sha256_file


def test_checksum_is_verified_once_per_file_and_corruption_is_caught_on_first_load(memory, tmp_path):
    files = MemoryFiles(tmp_path)
    forget_verified()
    good, bad = files.path("ab/good.safetensors"), files.path("ab/bad.safetensors")
    memory.save(good)
    memory.save(bad)
    sums = {p: sha256_file(p) for p in (good, bad)}
    # a file damaged before its first load is refused
    data = bytearray(bad.read_bytes())
    data[-7] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CorruptMemory, match="corrupt"):
        files.verify("ab/bad.safetensors", sums[bad])
    assert not files.verified("ab/bad.safetensors", sums[bad])
    # a good file is hashed on its first load only: damage that leaves size, mtime and inode alone
    # (which no writer of memory files does) is not seen again, showing no second hash happened
    assert files.verify("ab/good.safetensors", sums[good]) == good
    assert files.verified("ab/good.safetensors", sums[good])
    st = good.stat()
    with open(good, "r+b") as f:
        f.seek(-7, os.SEEK_END)
        f.write(b"\x00")
    os.utime(good, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert files.verify("ab/good.safetensors", sums[good]) == good
    # a file replaced the way Tome writes them (temporary name + rename: new inode) is hashed again
    tmp = good.with_name("x.part")
    tmp.write_bytes(good.read_bytes())
    os.replace(tmp, good)
    with pytest.raises(CorruptMemory, match="corrupt"):
        files.verify("ab/good.safetensors", sums[good])
    good.unlink()
    with pytest.raises(CorruptMemory, match="missing"):
        files.verify("ab/good.safetensors", sums[good])
