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


def test_bf16_embedder_stores_linear_weights_in_bf16_with_autocasts_vectors():
    """Autocast casts float32 Linear weights to bf16 on every call; stored in bf16 they give the same bits. The
    conversion runs through ``run`` (Tome's torch thread): torch in another thread slows every later prefill."""
    import torch
    from sentence_transformers import SentenceTransformer

    from retrieval.embed import load_embedder, packaged_model_dir

    ran = []

    def run(fn, *args, **kwargs):
        ran.append(fn.__name__)
        return fn(*args, **kwargs)

    texts = ["The door is red.", "Quarterly tax rules. " * 40]
    e = load_embedder(bf16=True, run=run)
    assert ran == ["SentenceTransformer", "_bf16_linears"]
    linears = [m for m in e.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(m.weight.dtype == torch.bfloat16 for m in linears)
    assert e.model[0].auto_model.embeddings.word_embeddings.weight.dtype == torch.float32
    plain = SentenceTransformer(str(packaged_model_dir()), device="cpu", local_files_only=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = plain.encode(texts, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert np.array_equal(e.encode(texts), want)
