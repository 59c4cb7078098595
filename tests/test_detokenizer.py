import pytest

from llmserve.serving.stop_strings import StopMatcher

TEXTS = ["Grüße, 世界! 🎉 naïve café — ok", "  leading spaces and\ttabs\nnew lines", "日本語のテキストです。",
         "emoji 👩‍👩‍👧‍👦 family, flags 🇫🇷🇩🇪", "Ελληνικά και русский"]


@pytest.mark.parametrize("text", TEXTS)
def test_deltas_join_to_the_full_decode_and_never_split_characters(tokenizer, text):
    ids = tokenizer.backend.encode(text, add_special_tokens=False).ids
    detok = tokenizer.detokenizer()
    deltas = [detok.add([t]) for t in ids]
    assert "".join(deltas) == tokenizer.decode(ids) == text
    for d in deltas:
        d.encode("utf-8")  # no lone surrogates / replacement halves
        assert "\ufffd" not in d


def test_special_tokens_skipped(tokenizer):
    detok = tokenizer.detokenizer(skip_special_tokens=True)
    ids = tokenizer.backend.encode("Hi", add_special_tokens=False).ids
    assert detok.add([1] + ids + [2]) == "Hi"


def test_stop_string_across_deltas_is_held_back_and_cut():
    m = StopMatcher(["###"])
    assert m.feed("Hello #") == "Hello "
    assert m.feed("#") == ""
    assert m.feed("# tail") == ""
    assert m.matched == "###"
    assert m.flush() == ""
    assert m.text == "Hello "




def test_partial_prefix_released_on_mismatch():
    m = StopMatcher(["END"])
    assert m.feed("the EN") == "the "
    assert m.feed("TER") == "ENTER"
    assert m.flush() == ""
    assert m.matched is None


def test_earliest_of_several_stops_wins():
    m = StopMatcher(["b", "xyz"])
    assert m.feed("axyzb") == "a"
    assert m.matched == "xyz"
