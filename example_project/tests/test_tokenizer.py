"""Plain functional tests: they run alongside the latency tests and never time anything."""
from tinygen import ByteTokenizer


def test_round_trip_unicode():
    tok = ByteTokenizer()
    text = "naïve café, 東京 🚀"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens_are_dropped_on_decode():
    tok = ByteTokenizer()
    assert tok.decode([tok.bos_id, *b"hi", tok.eos_id, tok.pad_id]) == "hi"


def test_batch_is_left_padded():
    tok = ByteTokenizer()
    ids, mask = tok.batch(["a", "abc"])
    assert ids.shape == mask.shape == (2, 4)
    assert ids[0, :2].tolist() == [tok.pad_id, tok.pad_id]
    assert mask.sum(dim=1).tolist() == [2, 4]
