"""kill -9 in the middle of an ingestion (stage 2, the memories), start again: the book was askable all along
and its memories are finished from the last saved chunk."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.conftest import MODELS_DIR, ROOT, make_pdf


def _env(data_dir):
    return {"TOME_DATA_DIR": str(data_dir), "TOME_MODELS_DIR": str(MODELS_DIR), "TOME_MODEL": "smollm2",
            "TOME_SEGMENT_LEN": "128", "TOME_BACKGROUND_CHUNK_SEGMENTS": "2", "HF_HUB_OFFLINE": "1",
            # shared budgets round chunks up to whole groups; groups of 2 keep several chunks to kill between
            "TOME_MEMORY_SHARE": "2",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def _ingest(data_dir, pdf, **kw):
    return subprocess.Popen([sys.executable, "app.py", "ingest", str(pdf)], cwd=ROOT, env=_env(data_dir),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _memory(data_dir):
    from uio.memory import Memory

    files = list((data_dir / "memories").rglob("*x.safetensors"))
    assert len(files) == 1, files
    return Memory.load(files[0])


@pytest.mark.slow
def test_kill_during_compression_then_resume(tmp_path):
    pages = [f"Chapter {i}. " + "The tide came in over the rocks and the gulls rose from the wall. " * 25
             for i in range(1, 13)]
    pdf = make_pdf(tmp_path / "tides.pdf", pages)
    killed = tmp_path / "killed"
    proc = _ingest(killed, pdf)
    deadline = time.time() + 240
    chunks = []
    while time.time() < deadline and proc.poll() is None:
        chunks = list((killed / "memories").rglob("*.chunk*.safetensors")) if (killed / "memories").exists() else []
        if len(chunks) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "ingestion finished before it could be killed; make the book longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(chunks) >= 3

    listing = subprocess.run([sys.executable, "app.py", "list"], cwd=ROOT, env=_env(killed),
                             capture_output=True, text=True, timeout=120)
    assert "compressing" in listing.stdout and "ingesting" not in listing.stdout  # askable, memories unfinished

    done = _ingest(killed, pdf)
    out, err = done.communicate(timeout=600)
    assert done.returncode == 0, err
    assert "queued the interrupted compression of 'tides' again" in out
    listing = subprocess.run([sys.executable, "app.py", "list"], cwd=ROOT, env=_env(killed),
                             capture_output=True, text=True, timeout=120)
    assert "ready" in listing.stdout and "compressing" not in listing.stdout
    assert not list((killed / "memories").rglob("*.chunk*"))

    clean = tmp_path / "clean"
    whole = _ingest(clean, pdf)
    whole.communicate(timeout=600)
    a, b = _memory(killed), _memory(clean)
    assert a.segment_ids == b.segment_ids and a.num_slots == b.num_slots
    assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)
