"""Tokenizers: ids against the reference World trie, spans that tile the prompt, round trips, display, factory."""
from __future__ import annotations

import importlib.util
import random
import unicodedata
from pathlib import Path

import pytest

from rwkv_core.errors import InputError, TokenizerError
from rwkv_core.io.tokenizer import Encoding, WorldTokenizer, tokenizer_for
from tests.conftest import shared_file

TEXTS = [
    "",
    "The Eiffel Tower is located in the city of Paris.",
    "def f(x):\n    return {'a': x ** 2}  # square\n",
    "   leading, inner    runs and trailing   ",
    "line one\nline two\n\n\nafter blank lines\r\nwindows\r\n",
    "\ttab\t\tseparated\tvalues\n",
    "中文测试：你好，世界！日本語のテキスト、한국어 문장",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇫🇷 heart ❤️ end",
    "Mixed: English, Русский, Ελληνικά, עברית, العربية, हिन्दी, ไทย.",
    "café naïve résumé Ångström façade São Paulo Zürich",
    "math 𝕏 ∑ ∫ ≠ ≤ and rare 𐍈 𝄞",
    "\x00\x01\x7f control \x0b\x0c chars",
    "line\u2028separator and nbsp\u00a0here",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" * 3,
    "!!!???...---===***",
    "é",
    "😀",
]


def _random_texts(n: int = 150, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    pieces = ["the", " cat", "Paris", " ", "  ", "\n", "\t", "é", "ü", "中", "文", "😀", "🏽", "\u200d", "ą",
              "x", "1", "23", "{", "}", "'", "\r\n", "й", "ß", "ﬁ"]
    out = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randrange(0, 12)):
            if rng.random() < 0.2:
                cp = rng.randrange(0x20, 0x2FFFF)
                parts.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "?")
            else:
                parts.append(rng.choice(pieces))
        out.append("".join(parts))
    return out


ALL_TEXTS = TEXTS + _random_texts()
HF_TEXTS = [t for t in ALL_TEXTS if unicodedata.is_normalized("NFC", t)]


@pytest.fixture(scope="module")
def world() -> WorldTokenizer:
    return tokenizer_for(kind="world")


@pytest.fixture(scope="module")
def reference():
    from rwkv.rwkv_tokenizer import TRIE_TOKENIZER

    spec = importlib.util.find_spec("rwkv")
    return TRIE_TOKENIZER(str(Path(spec.submodule_search_locations[0]) / "rwkv_vocab_v20230424.txt"))


@pytest.fixture(scope="module")
def hf():
    return tokenizer_for(kind="hf", path=shared_file("tokenizers/20B_tokenizer.json"))


def _tokenizers(world, hf=None):
    toks = [tokenizer_for(kind="bytes"), tokenizer_for(kind="bytes-utf16le"), world]
    return toks + ([hf] if hf is not None else [])


def _codec(tok) -> str:
    return "utf-16-le" if tok.kind == "bytes-utf16le" else "utf-8"


def _token_byte_ranges(tok, enc: Encoding) -> list[tuple[int, int]]:
    ranges, pos = [], 0
    for i in enc.ids:
        n = len(tok.token_bytes(i))
        ranges.append((pos, pos + n))
        pos += n
    return ranges


def _check_encoding(tok, text: str) -> None:
    """Ids spell the text's bytes, spans tile it, each character sits in the token holding its first byte."""
    enc = tok.encode(text)
    assert enc.text == text
    assert len(enc.ids) == len(enc.spans)
    data = text.encode(_codec(tok))
    assert b"".join(tok.token_bytes(i) for i in enc.ids) == data
    assert "".join(enc.token_texts) == text
    pos = 0
    for s, e in enc.spans:
        assert s == pos and e >= s
        pos = e
    assert pos == len(text)
    char_first_byte = [len(text[:k].encode(_codec(tok))) for k in range(len(text))]
    for (a, b), tt in zip(_token_byte_ranges(tok, enc), enc.token_texts):
        assert tt == "".join(text[k] for k in range(len(text)) if a <= char_first_byte[k] < b)
    assert tok.decode(enc.ids) == text


def test_world_ids_match_reference_trie(world, reference):
    for text in ALL_TEXTS:
        assert world.encode(text).ids == reference.encode(text), repr(text)
        assert world._greedy(text.encode("utf-8")) == reference.encode(text), repr(text)  # the fallback path


def test_world_vocabulary_table(world, reference):
    assert world.vocab_size == 65536
    assert world.token_bytes(1) == b"\x00" and world.token_bytes(256) == b"\xff"  # id = byte + 1
    assert all(world.token_bytes(i) == b for i, b in reference.idx2token.items())
    assert world.token_bytes(0) == b"" and world.token_bytes(65535) == b""


@pytest.mark.parametrize("kind", ["bytes", "bytes-utf16le", "world"])
def test_spans_tile_and_round_trip(kind, world):
    tok = world if kind == "world" else tokenizer_for(kind=kind)
    for text in ALL_TEXTS:
        _check_encoding(tok, text)


def test_hf_spans_tile_and_round_trip(hf):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(hf.path)
    for text in HF_TEXTS:
        _check_encoding(hf, text)
        enc = hf.encode(text)
        assert enc.ids == raw.encode(text, add_special_tokens=False).ids
        assert hf.decode(enc.ids) == raw.decode(enc.ids, skip_special_tokens=False)
    assert hf.vocab_size == 50277
    assert hf.encode(" world").spans == [(0, 6)]  # the trimmed leading space stays with its token


def test_hf_non_nfc_text_still_tiles(hf):
    for text in ["cafe\u0301 au lait", "A\u030a x\r\n y  ", "\u1100\u1161 e\u0301\n"]:  # NFC changes the bytes
        enc = hf.encode(text)
        assert b"".join(hf.token_bytes(i) for i in enc.ids) != text.encode()  # the offsets path is taken
        assert "".join(enc.token_texts) == text
        assert all(s <= e for s, e in enc.spans)


def test_byte_ids():
    text = "héllo 😀\n"
    assert tokenizer_for(kind="bytes").encode(text).ids == list(text.encode("utf-8"))
    for t in ALL_TEXTS:
        assert tokenizer_for(kind="bytes-utf16le").encode(t).ids == list(t.encode("utf-16-le"))


def test_utf16_decode_pairs_bytes():
    tok = tokenizer_for(kind="bytes-utf16le")
    ids = list("A😀é".encode("utf-16-le"))
    assert tok.decode(ids) == "A😀é"
    assert tok.decode(ids[:2]) == "A"
    assert tok.decode(ids[:3]) == "A\ufffd"  # odd byte: half a code unit
    assert tok.decode(ids[:4]) == "A\ufffd"  # high surrogate without its pair
    enc = tok.encode("A😀é")
    assert enc.spans == [(0, 1), (1, 1), (1, 2), (2, 2), (2, 2), (2, 2), (2, 3), (3, 3)]


def test_span_convention_multibyte():
    enc = tokenizer_for(kind="bytes").encode("aé😀")
    assert enc.spans == [(0, 1), (1, 2), (2, 2), (2, 3), (3, 3), (3, 3), (3, 3)]
    assert enc.token_texts == ["a", "é", "", "😀", "", "", ""]


def test_display(world, hf):
    assert world.display(0xE4 + 1) == "\\xe4"  # a lone byte that is not UTF-8 on its own
    assert world.display(world.encode("\n").ids[0]) == "↵"
    assert world.display(world.encode("\t").ids[0]) == "⇥"
    assert world.display(world.encode(" Paris").ids[0]) == " Paris"
    assert world.display(world.encode("\r").ids[0]) == "\\r"
    assert world.display(0) == "<|endoftext|>"
    assert world.display(65535) == "<unused 65535>"
    nl2 = world.encode("\n\n").ids
    assert len(nl2) == 1 and world.display(nl2[0]) == "↵↵"
    b = tokenizer_for(kind="bytes")
    assert b.display(ord("A")) == "A" and b.display(0xC3) == "\\xc3" and b.display(0) == "\\x00"
    emoji = hf.encode("😀").ids
    assert len(emoji) > 1 and hf.display(emoji[0]).startswith("\\xf0")
    assert hf.display(hf.encode(" world").ids[0]) == " world"
    assert hf.display(0) == "<|endoftext|>"


def test_decode_replaces_invalid_utf8(world):
    assert world.decode([0xE4 + 1]) == "\ufffd"
    assert tokenizer_for(kind="bytes").decode([0x41, 0xFF, 0x42]) == "A\ufffdB"
    assert world.decode([0] + world.encode("hi").ids) == "hi"


def _expected_token_range(tok, enc: Encoding, start: int, end: int) -> tuple[int, int]:
    """Tokens holding any byte of text[start:end], from byte offsets."""
    codec = _codec(tok)
    sb, eb = len(enc.text[:start].encode(codec)), len(enc.text[:end].encode(codec))
    ranges = _token_byte_ranges(tok, enc)
    first = next(i for i, (a, b) in enumerate(ranges) if a <= sb < b)
    last = next(i for i, (a, b) in enumerate(ranges) if a < eb <= b)
    return first, last + 1


def test_tokens_in_char_span_exhaustive(world, hf):
    texts = ["The Eiffel Tower", "café 😀👍🏽 中文 x", "a\n\tb  c", "é"]
    for tok in _tokenizers(world, hf):
        for text in texts:
            enc = tok.encode(text)
            for start in range(len(text)):
                for end in range(start + 1, len(text) + 1):
                    assert enc.tokens_in_char_span(start, end) == _expected_token_range(tok, enc, start, end), \
                        (tok.kind, text, start, end)


def test_subject_in_middle_of_a_word(world, hf):
    prompt = "The Eiffel Tower is located in Paris"
    start = prompt.index("ffel")
    end = start + len("ffel Tow")
    b = tokenizer_for(kind="bytes").encode(prompt)
    assert b.tokens_in_char_span(start, end) == (start, end)
    expected = {"world": (["The", " E", "iffe", "l", " Tower"], (2, 5)), "hf": (["The", " E", "iff", "el", " Tower"], (2, 5))}
    for tok in (world, hf):
        enc = tok.encode(prompt)
        texts, token_range = expected[tok.kind]
        assert enc.token_texts[:5] == texts
        first, last = enc.tokens_in_char_span(start, end)
        assert (first, last) == token_range  # from the token holding "f" (inside "iff…") to " Tower"
        assert enc.spans[first][0] < start < enc.spans[first][1]
    enc = tokenizer_for(kind="bytes").encode("un café noir")
    assert enc.tokens_in_char_span(5, 7) == (5, 8)  # "fé": the two bytes of é included


def test_tokens_in_char_span_rejects_bad_ranges():
    enc = tokenizer_for(kind="bytes").encode("abc")
    for start, end in [(1, 1), (2, 1), (-1, 2), (0, 4)]:
        with pytest.raises(InputError):
            enc.tokens_in_char_span(start, end)


def test_encoding_checks_spans():
    with pytest.raises(TokenizerError):
        Encoding([1], [(0, 2)], "a")
    with pytest.raises(TokenizerError):
        Encoding([1, 2], [(0, 1)], "a")
    assert len(Encoding([], [], "")) == 0


def test_unpaired_surrogate_is_an_input_error(world):
    for tok in (tokenizer_for(kind="bytes"), tokenizer_for(kind="bytes-utf16le"), world):
        with pytest.raises(InputError):
            tok.encode("a\ud800b")


def test_ids_out_of_range(world):
    with pytest.raises(TokenizerError):
        tokenizer_for(kind="bytes").token_bytes(256)
    with pytest.raises(TokenizerError):
        world.display(65536)
    with pytest.raises(TokenizerError):
        tokenizer_for(kind="bytes-utf16le").decode([300])


def test_factory(world):
    assert tokenizer_for(256).kind == "bytes"
    assert tokenizer_for(256, utf16=True).kind == "bytes-utf16le"
    w = tokenizer_for(65536)
    assert w.kind == "world" and w.vocab_size == 65536
    assert tokenizer_for(65536, kind="bytes").kind == "bytes"
    with pytest.raises(TokenizerError, match="path="):
        tokenizer_for(50277, kind="hf")
    with pytest.raises(TokenizerError, match="256 embedding rows"):
        tokenizer_for(256, kind="world")
    with pytest.raises(TokenizerError, match="utf16"):
        tokenizer_for(65536, utf16=True)
    with pytest.raises(TokenizerError, match="unknown tokenizer kind"):
        tokenizer_for(kind="sentencepiece")
    with pytest.raises(TokenizerError, match="path="):
        tokenizer_for(kind="hf")
    with pytest.raises(TokenizerError, match="not found"):
        tokenizer_for(kind="hf", path="/nonexistent/tokenizer.json")


def test_factory_hf(tmp_path):
    path = str(shared_file("tokenizers/20B_tokenizer.json"))
    tok = tokenizer_for(50304, path=path)
    assert tok.kind == "hf" and tok.vocab_size == 50304
    assert tok.display(50300) == "<unused 50300>" and tok.token_bytes(50300) == b""
    assert tokenizer_for(50277, path=path).vocab_size == 50277
    with pytest.raises(TokenizerError, match="embedding rows"):
        tokenizer_for(50000, kind="hf", path=path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(TokenizerError, match="bad.json"):
        tokenizer_for(kind="hf", path=bad)


def test_world_vocab_path_fallback_and_errors(tmp_path):
    vocab = shared_file("tokenizers/rwkv_vocab_v20230424.txt")  # LF copy; the packaged one is CRLF
    tok = tokenizer_for(kind="world", path=vocab)
    assert tok.encode("Hello 世界").ids == tokenizer_for(kind="world").encode("Hello 世界").ids
    bad = tmp_path / "vocab.txt"
    bad.write_text("1 'a' 2\n")
    with pytest.raises(TokenizerError, match="line 1"):
        WorldTokenizer(bad)
    # a line that would join its neighbours into another expression when the literals are parsed as one list:
    # refused, naming that line (and the blank line before it counts)
    bad.write_text("1 'a' 1\n\n2 'b'] + ['c' 2\n3 'd' 1\n")
    with pytest.raises(TokenizerError, match="line 3"):
        WorldTokenizer(bad)
    good = tmp_path / "good.txt"
    good.write_text("1 'a' 1\r\n2 b'\\xff' 1\r\n3 '\u2028x' 4\r\n")
    assert WorldTokenizer(good).display(3) != "" and WorldTokenizer(good).encode("a\u2028x").ids == [1, 3]


def test_digits_tokenizer_for_task_model():
    from rwkv_core.io.tokenizer import tokenizer_for

    tok = tokenizer_for(kind="digits")
    enc = tok.encode("907,")
    assert enc.ids == [9, 0, 7, 10] and enc.spans == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert tok.decode([7, 0, 9, 11]) == "709#"
    with pytest.raises(InputError, match="alphabet"):
        tok.encode("12a")


def test_ids_tokenizer_round_trip():
    tok = tokenizer_for(777, kind="ids")
    enc = tok.encode("1, 2,3  776")
    assert tok.kind == "ids" and tok.vocab_size == 777
    assert enc.ids == [1, 2, 3, 776]
    assert enc.token_texts == ["1, ", "2,", "3  ", "776"]  # the separators after an id belong to it
    assert [tok.display(i) for i in enc.ids] == ["1", "2", "3", "776"]
    assert tok.encode(tok.decode(enc.ids)).ids == enc.ids
    assert tok.encode("  5").spans == [(0, 3)] and tok.encode("").ids == []
    assert enc.tokens_in_char_span(3, 4) == (1, 2)  # a subject "2" is token 1


def test_ids_tokenizer_errors():
    tok = tokenizer_for(777, kind="ids")
    for bad in ("1, two, 3", "1.5", "-1", "0x10", "١"):
        with pytest.raises(InputError, match="not a token id"):
            tok.encode(bad)
    with pytest.raises(InputError, match="outside the model's vocabulary of 777"):
        tok.encode("1, 777")
    with pytest.raises(InputError, match="no token ids"):
        tok.encode(" , ")
    with pytest.raises(TokenizerError):
        tok.token_bytes(777)
    with pytest.raises(TokenizerError, match="vocabulary size"):
        tokenizer_for(kind="ids")


def test_auto_gives_ids_for_a_vocabulary_no_tokenizer_matches():
    assert tokenizer_for(777).kind == "ids" and tokenizer_for(777, kind="auto").vocab_size == 777
    assert tokenizer_for(12).kind == "digits"  # the reverse-digits task model
    with pytest.raises(TokenizerError, match="path="):
        tokenizer_for(777, kind="hf")  # an explicit Hugging Face kind still needs its file
