"""The model and the generation loop behave: deterministic, and the KV cache changes nothing but speed."""
from tinygen import build_model, generate, greedy_tokens


def test_same_seed_same_text(model, tokenizer):
    again = build_model(seed=0)
    assert generate(model, tokenizer, "Hello", 12) == generate(again, tokenizer, "Hello", 12)


def test_kv_cache_gives_the_same_tokens(model, prompt_ids):
    with_cache = greedy_tokens(model, prompt_ids, max_new_tokens=12, use_cache=True)
    without = greedy_tokens(model, prompt_ids, max_new_tokens=12, use_cache=False)
    assert len(with_cache) == 12
    assert with_cache == without
