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
