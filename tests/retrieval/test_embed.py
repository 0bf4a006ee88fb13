"""The packaged embedder loads offline."""
import numpy as np


def test_real_embedder_loads_offline_and_normalises():
    from retrieval.embed import DEFAULT_NAME, load_embedder, packaged_model_dir

    assert (packaged_model_dir() / "model.safetensors").is_file()
    e = load_embedder()
    v = e.encode(["The door is red.", "A red door.", "Quarterly tax rules."])
    assert e.name == DEFAULT_NAME and v.dtype == np.float32 and v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2]


def test_bf16_autocast_vectors_match_float32():
    from retrieval.embed import load_embedder

    texts = ["The door is red.", "A red door.", "Quarterly tax rules. " * 40]
    fp32, bf16 = load_embedder(bf16=False).encode(texts), load_embedder(bf16=True).encode(texts)
    assert bf16.dtype == np.float32 and np.allclose(np.linalg.norm(bf16, axis=1), 1, atol=1e-5)
    assert (fp32 * bf16).sum(axis=1).min() > 0.999  # the same vectors, to retrieval
