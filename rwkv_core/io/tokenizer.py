"""Tokenizers for RWKV models: token ids plus the character span of every token in the prompt.

Kinds (see `KINDS`):
  "bytes"          id = each byte of the UTF-8 encoding (rwkv.cpp tiny models, 256 rows)
  "bytes-utf16le"  id = each byte of text.encode("utf-16-le") (the v6 tiny models)
  "world"          RWKV World vocabulary: greedy longest match, ids 1..65529, id = byte + 1 for single bytes
  "hf"             a Hugging Face `tokenizers` JSON file, e.g. GPT-NeoX 20B for RWKV-4 Pile models
  "digits"         one token per character of "0123456789,#" (BlinkDL's reverse-digits task model, 12 rows)
  "ids"            the prompt is typed as token ids, "1, 2, 3"; each token shows as its id (a model whose
                   vocabulary matches no tokenizer)
`tokenizer_for` picks one by kind or, by default, from the model's vocabulary size.

Span convention (all kinds). Spans are character offsets into the prompt `str`; concatenated in order they are
exactly the prompt: span i ends where span i+1 starts, the first starts at 0, the last ends at len(text).
A character belongs to the token that holds its *first* byte (its first UTF-16 code unit byte for
"bytes-utf16le"). A token made only of continuation bytes of a character started by an earlier token gets the
empty span (p, p), p being the end of the previous span. Example, byte-level "é" = c3 a9: token 0 has span
(0, 1), token 1 has span (1, 1). Hence `Encoding.token_texts` joined is the prompt, and a token range that
covers a character range must also take the empty-span tokens that follow it (`tokens_in_char_span` does).

"hf": when the tokens' bytes spell the prompt's UTF-8 exactly (byte-level BPE such as GPT-NeoX on text its
normalizer leaves alone, e.g. NFC text) the spans follow the same first-byte convention. Otherwise (decomposed
accents under an NFC normalizer, WordPiece-like vocabularies) they come from the tokenizer's character offsets
made contiguous: text the offsets skip belongs to the next token, a token whose offsets end inside what earlier
tokens cover gets an empty span. That still tiles the prompt, but whitespace may land on a neighbouring token.
"""
from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from rwkv_core.errors import InputError, TokenizerError

KINDS = ("bytes", "bytes-utf16le", "world", "hf", "digits", "ids")
DIGITS_ALPHABET = "0123456789,#"  # the reverse-digits task model (BlinkDL RWKV-v8 experiments)
WORLD_VOCAB_FILE = "rwkv_vocab_v20230424.txt"
WORLD_VOCAB_SIZE = 65536  # embedding rows of World models; ids 1..65529 are tokens, 0 is end-of-text
EOT_DISPLAY = "<|endoftext|>"


@dataclass(frozen=True)
class Encoding:
    """A tokenised prompt: `ids[i]` covers the characters `text[spans[i][0]:spans[i][1]]` (see module docstring)."""

    ids: list[int]
    spans: list[tuple[int, int]]
    text: str

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.spans):
            raise TokenizerError(f"encoding has {len(self.ids)} ids but {len(self.spans)} spans")
        pos = 0
        for start, end in self.spans:
            if start != pos or end < start:
                raise TokenizerError(f"token spans do not tile the prompt: span ({start}, {end}) after offset {pos}")
            pos = end
        if pos != len(self.text):
            raise TokenizerError(f"token spans cover {pos} of the prompt's {len(self.text)} characters")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def token_texts(self) -> list[str]:
        """The prompt substring of every token ('' for a token inside a character started earlier)."""
        return [self.text[s:e] for s, e in self.spans]

    def tokens_in_char_span(self, start: int, end: int) -> tuple[int, int]:
        """Token index range [first, last_exclusive) holding every byte of the characters text[start:end].

        `first` is the token holding the first byte of text[start], even when `start` is in the middle of that
        token's span (a subject starting mid-word); the range ends after the empty-span tokens that complete
        the character text[end - 1] when that character ends its token's span.
        """
        if not 0 <= start < end <= len(self.text):
            raise InputError(f"character range ({start}, {end}) is empty or outside the prompt of {len(self.text)} characters")
        first = next(i for i, (s, e) in enumerate(self.spans) if s <= start < e)
        last = next(i for i in range(first, len(self.spans)) if self.spans[i][0] < end <= self.spans[i][1])
        if self.spans[last][1] == end:
            while last + 1 < len(self.spans) and self.spans[last + 1] == (end, end):
                last += 1
        return first, last + 1


class Tokenizer:
    """Base class: ids and spans from a prompt, bytes and a readable form for every id.

    `vocab_size` is the number of valid ids (the model's embedding rows); ids in range that stand for no text
    (World end-of-text 0, padding rows) have empty `token_bytes` and a display like "<unused 65531>".
    """

    kind: str = ""
    vocab_size: int = 0

    def encode(self, text: str) -> Encoding:
        raise NotImplementedError

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes this token stands for (b"" for ids that stand for no text)."""
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        """Text of a token sequence; bytes that are not valid UTF-8 become U+FFFD."""
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    def display(self, token_id: int) -> str:
        """One token in readable form: invalid UTF-8 escaped as \\xe4, newline ↵, tab ⇥, other controls escaped."""
        b = self.token_bytes(token_id)
        return display_bytes(b) if b else self._empty_display(token_id)

    def _empty_display(self, token_id: int) -> str:
        return f"<unused {token_id}>"

    def _check_id(self, token_id: int) -> int:
        if not 0 <= token_id < self.vocab_size:
            raise TokenizerError(f"token id {token_id} is outside the {self.kind} vocabulary of {self.vocab_size} ids")
        return int(token_id)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} kind={self.kind!r} vocab_size={self.vocab_size}>"


def display_bytes(b: bytes) -> str:
    """Readable form of token bytes; a literal backslash in the text is shown as is."""
    out = []
    for ch in b.decode("utf-8", errors="backslashreplace"):
        if ch == "\n":
            out.append("↵")
        elif ch == "\t":
            out.append("⇥")
        elif unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(ch.encode("unicode_escape").decode("ascii"))  # \r, \x00, \u200d, ...
        else:
            out.append(ch)
    return "".join(out)


def _utf8_bytes(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str):
        raise InputError(f"prompt must be a str, not {type(text).__name__}")
    try:
        return text.encode(encoding)
    except UnicodeEncodeError as e:
        raise InputError(f"prompt has an unpaired surrogate {text[e.start]!r} at character {e.start}; it cannot be tokenised") from e


def _spans_from_byte_lengths(text: str, lengths: list[int], utf16: bool = False) -> list[tuple[int, int]]:
    """Spans under the first-byte convention, given the byte length of every token in order."""
    starts, pos = [], 0
    for ch in text:  # byte offset where each character starts
        starts.append(pos)
        o = ord(ch)
        pos += (4 if o > 0xFFFF else 2) if utf16 else (1 if o < 0x80 else 2 if o < 0x800 else 3 if o < 0x10000 else 4)
    if sum(lengths) != pos:
        raise TokenizerError(f"token bytes ({sum(lengths)}) do not match the prompt's {pos} bytes")
    spans, ci, end = [], 0, 0
    for n in lengths:
        end += n
        c0 = ci
        while ci < len(starts) and starts[ci] < end:
            ci += 1
        spans.append((c0, ci))
    return spans


class ByteTokenizer(Tokenizer):
    """One token per byte: of the UTF-8 encoding ("bytes") or of the UTF-16-LE encoding ("bytes-utf16le")."""

    def __init__(self, utf16: bool = False):
        self.utf16 = utf16
        self.kind = "bytes-utf16le" if utf16 else "bytes"
        self.vocab_size = 256
        self._codec = "utf-16-le" if utf16 else "utf-8"

    def encode(self, text: str) -> Encoding:
        ids = list(_utf8_bytes(text, self._codec))
        return Encoding(ids, _spans_from_byte_lengths(text, [1] * len(ids), self.utf16), text)

    def token_bytes(self, token_id: int) -> bytes:
        return bytes([self._check_id(token_id)])

    def decode(self, ids: list[int]) -> str:
        """UTF-16-LE: two bytes make one code unit; an odd last byte or a lone surrogate becomes U+FFFD."""
        return bytes(self._check_id(i) for i in ids).decode(self._codec, errors="replace")


class CharTokenizer(Tokenizer):
    """One token per character of a small fixed alphabet (task models such as the reverse-digits model)."""

    def __init__(self, alphabet: str = DIGITS_ALPHABET, kind: str = "digits"):
        if not alphabet or len(set(alphabet)) != len(alphabet):
            raise TokenizerError("a character tokenizer needs a non-empty alphabet without repeats")
        self.alphabet, self.kind, self.vocab_size = alphabet, kind, len(alphabet)
        self._ids = {c: i for i, c in enumerate(alphabet)}

    def encode(self, text: str) -> Encoding:
        if not isinstance(text, str):
            raise InputError(f"prompt must be a str, not {type(text).__name__}")
        bad = sorted({c for c in text if c not in self._ids})
        if bad:
            raise InputError(f"characters {''.join(bad)!r} are not in this model's alphabet {self.alphabet!r}")
        return Encoding([self._ids[c] for c in text], [(i, i + 1) for i in range(len(text))], text)

    def token_bytes(self, token_id: int) -> bytes:
        return self.alphabet[self._check_id(token_id)].encode()

    def decode(self, ids: list[int]) -> str:
        return "".join(self.alphabet[self._check_id(i)] for i in ids)


class IdsTokenizer(Tokenizer):
    """The prompt typed as token ids separated by commas or spaces ("1, 2, 3"); every token shows as its id.

    For a model whose vocabulary matches no tokenizer. A token's span runs from its id to the next id, so the
    separators after an id belong to it (leading separators to the first token).
    """

    kind = "ids"

    def __init__(self, vocab_size: int):
        if int(vocab_size) < 1:
            raise TokenizerError("the ids tokenizer needs a vocabulary of at least one id")
        self.vocab_size = int(vocab_size)

    def encode(self, text: str) -> Encoding:
        if not isinstance(text, str):
            raise InputError(f"prompt must be a str, not {type(text).__name__}")
        found = list(re.finditer(r"[^\s,]+", text))
        if not found:
            if text:
                raise InputError("the prompt has no token ids: type them separated by commas or spaces, e.g. 1, 2, 3")
            return Encoding([], [], text)
        ids = []
        for m in found:
            if not m.group().isascii() or not m.group().isdigit():
                raise InputError(f"{m.group()!r} is not a token id: type the prompt as token ids separated by commas "
                                 "or spaces, e.g. 1, 2, 3")
            i = int(m.group())
            if i >= self.vocab_size:
                raise InputError(f"token id {i} is outside the model's vocabulary of {self.vocab_size} ids "
                                 f"(0..{self.vocab_size - 1})")
            ids.append(i)
        starts = [0] + [m.start() for m in found[1:]] + [len(text)]
        return Encoding(ids, list(zip(starts[:-1], starts[1:])), text)

    def token_bytes(self, token_id: int) -> bytes:
        return str(self._check_id(token_id)).encode()

    def decode(self, ids: list[int]) -> str:
        """The ids as the prompt would type them, "1, 2, 3" (encode(decode(ids)) == ids)."""
        return ", ".join(str(self._check_id(i)) for i in ids)


def default_world_vocab_path() -> Path:
    """The World vocabulary shipped in the `rwkv` package, else the copy in `pyrwkv_tokenizer`."""
    for package in ("rwkv", "pyrwkv_tokenizer"):
        spec = importlib.util.find_spec(package)
        for folder in (spec.submodule_search_locations or []) if spec else []:
            p = Path(folder) / WORLD_VOCAB_FILE
            if p.is_file():
                return p
    raise TokenizerError(f"{WORLD_VOCAB_FILE} not found: install the `rwkv` or `pyrwkv-tokenizer` package, or pass path=")


@functools.lru_cache(maxsize=4)
def _load_world_vocab(path: str) -> dict[int, bytes]:
    """Parse `<id> <python str or bytes literal> <byte length>` lines (LF or CRLF) into id -> bytes.

    All literals are parsed as one list (half the time of one `literal_eval` per line); a file that does not parse
    that way is read line by line, which names the first bad line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(n, line.rstrip("\r\n")) for n, line in enumerate(f, 1) if line.strip()]  # not splitlines:
            # a token may hold U+2028 and the like
    except OSError as e:
        raise TokenizerError(f"{path}: cannot read the World vocabulary ({e.strerror})") from e
    if not lines:
        raise TokenizerError(f"{path}: empty World vocabulary")
    try:
        fields = [(idx, *rest.rsplit(" ", 1)) for idx, rest in (line.split(" ", 1) for _, line in lines)]
        tree = ast.parse("[" + ",\n".join(literal for _, literal, _ in fields) + "]", mode="eval").body
        values = [e.value for e in tree.elts if isinstance(e, ast.Constant)] if isinstance(tree, ast.List) else []
        if len(values) == len(fields):
            table = {}
            for (idx, _, length), x in zip(fields, values):
                x = x.encode("utf-8") if isinstance(x, str) else x
                if not isinstance(x, bytes) or len(x) != int(length):
                    raise ValueError("token length does not match")
                table[int(idx)] = x
            return table
    except (ValueError, SyntaxError):
        pass
    return _load_world_vocab_by_line(path, lines)


def _load_world_vocab_by_line(path: str, lines: list[tuple[int, str]]) -> dict[int, bytes]:
    """The vocabulary one line at a time, with the number of the first line that is not `<id> <literal> <length>`."""
    table: dict[int, bytes] = {}
    for n, line in lines:
        try:
            idx, rest = line.split(" ", 1)
            literal, length = rest.rsplit(" ", 1)
            x = ast.literal_eval(literal)
            x = x.encode("utf-8") if isinstance(x, str) else x
            if not isinstance(x, bytes) or len(x) != int(length):
                raise ValueError("token length does not match")
            table[int(idx)] = x
        except (ValueError, SyntaxError) as e:
            raise TokenizerError(f"{os.path.basename(path)} line {n}: not '<id> <literal> <length>' ({e})") from e
    return table


@functools.lru_cache(maxsize=4)
def _load_fast_world(path: str):
    """pyrwkv-tokenizer's Rust trie on the same file, or None when the package is missing or cannot read it."""
    try:
        import pyrwkv_tokenizer
        return pyrwkv_tokenizer.RWKVTokenizer(vocab_filepath=path)
    except BaseException as e:  # a Rust panic is a BaseException (pyo3_runtime.PanicException)
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        return None


class WorldTokenizer(Tokenizer):
    """RWKV World vocabulary, greedy longest byte match like the reference `rwkv.rwkv_tokenizer.TRIE_TOKENIZER`.

    Ids come from `pyrwkv-tokenizer` (fast, agrees with the reference); spans and bytes come from our own
    id -> bytes table, so pyrwkv's decode (which panics on ids >= 65530) is never used. Should pyrwkv be
    missing or its ids not spell the prompt's bytes, our own greedy matcher gives the ids.
    """

    kind = "world"

    def __init__(self, path: str | os.PathLike | None = None, vocab_size: int = WORLD_VOCAB_SIZE):
        self.path = str(path) if path is not None else str(default_world_vocab_path())
        self._bytes = _load_world_vocab(self.path)
        self._ids = {b: i for i, b in self._bytes.items()}
        self._max_len = max(map(len, self._ids))
        self._fast = _load_fast_world(self.path)
        self.n_ids = max(self._bytes) + 1
        self.vocab_size = max(vocab_size, self.n_ids)

    def encode(self, text: str) -> Encoding:
        data = _utf8_bytes(text)
        ids = list(self._fast.encode(text)) if self._fast is not None else None
        if ids is None or b"".join(self._bytes.get(i, b"\xff\xff") for i in ids) != data:
            ids = self._greedy(data)
        return Encoding(ids, _spans_from_byte_lengths(text, [len(self._bytes[i]) for i in ids]), text)

    def _greedy(self, data: bytes) -> list[int]:
        """Longest vocabulary entry at each position: the reference trie's rule."""
        ids, i = [], 0
        while i < len(data):
            for n in range(min(self._max_len, len(data) - i), 0, -1):
                tid = self._ids.get(data[i:i + n])
                if tid is not None:
                    ids.append(tid)
                    i += n
                    break
            else:
                raise TokenizerError(f"byte {data[i]:#04x} is not in the World vocabulary {self.path}")
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        return self._bytes.get(self._check_id(token_id), b"")

    def _empty_display(self, token_id: int) -> str:
        return EOT_DISPLAY if token_id == 0 else f"<unused {token_id}>"


def _byte_level_inverse() -> dict[str, int]:
    """GPT-2 byte-level BPE alphabet: the printable stand-in character -> the byte it encodes."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` JSON file; no special tokens are added around the prompt."""

    kind = "hf"

    def __init__(self, path: str | os.PathLike, vocab_size: int | None = None):
        from tokenizers import Tokenizer as _HF, decoders

        self.path = str(path)
        if not os.path.isfile(self.path):
            raise TokenizerError(f"{self.path}: tokenizer file not found")
        try:
            self._tok = _HF.from_file(self.path)
        except Exception as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TokenizerError(f"{os.path.basename(self.path)}: not a Hugging Face tokenizers JSON file ({first_line})") from e
        self.n_ids = self._tok.get_vocab_size(with_added_tokens=True)
        self.vocab_size = max(vocab_size or 0, self.n_ids)
        self._added = {i: t.content for i, t in self._tok.get_added_tokens_decoder().items()}
        self._byte_level = _byte_level_inverse() if isinstance(self._tok.decoder, decoders.ByteLevel) else None

    def encode(self, text: str) -> Encoding:
        data = _utf8_bytes(text)
        enc = self._tok.encode(text, add_special_tokens=False)
        if text and not enc.ids:
            raise TokenizerError(f"{os.path.basename(self.path)} produced no tokens for a non-empty prompt")
        pieces = [self.token_bytes(i) for i in enc.ids] if self._byte_level is not None else []
        if pieces and b"".join(pieces) == data:  # exact bytes: the first-byte convention, as for the other kinds
            return Encoding(list(enc.ids), _spans_from_byte_lengths(text, [len(p) for p in pieces]), text)
        spans, covered = [], 0
        for _, end in enc.offsets:
            spans.append((covered, max(covered, end)))
            covered = max(covered, end)
        if spans:
            spans[-1] = (spans[-1][0], len(text))
        return Encoding(list(enc.ids), spans, text)

    def token_bytes(self, token_id: int) -> bytes:
        """Exact bytes for byte-level BPE and added tokens; otherwise the UTF-8 of the token decoded alone."""
        token_id = self._check_id(token_id)
        if token_id in self._added:
            return self._added[token_id].encode("utf-8")
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        if self._byte_level is not None and all(c in self._byte_level for c in piece):
            return bytes(self._byte_level[c] for c in piece)
        return self._tok.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def decode(self, ids: list[int]) -> str:
        """Special tokens are kept, so generated end-of-text shows."""
        if self._byte_level is not None:
            return super().decode(ids)
        for i in ids:
            self._check_id(i)
        return self._tok.decode([i for i in ids if i < self.n_ids], skip_special_tokens=False)


def _auto_kind(vocab_size: int, path: str | os.PathLike | None) -> str:
    """The kind a vocabulary size implies: 256 rows bytes, 65536 World, 12 the digits alphabet (without a file),
    a tokenizer file Hugging Face, anything else token ids."""
    if vocab_size == 256:
        return "bytes"
    if vocab_size == WORLD_VOCAB_SIZE:
        return "world"
    if path is not None:
        return "hf"
    return "digits" if vocab_size == len(DIGITS_ALPHABET) else "ids"


def tokenizer_for(vocab_size: int | None = None, *, kind: str | None = None, path: str | os.PathLike | None = None,
                  utf16: bool = False) -> Tokenizer:
    """The tokenizer for a model with `vocab_size` embedding rows, the one place tokenizers are chosen.

    kind None or "auto" picks by the vocabulary size (`_auto_kind`); `utf16` turns bytes into bytes-utf16le;
    `path` is the World vocabulary file (optional) or the Hugging Face JSON file (required for "hf").
    Without `vocab_size` a kind must be given and the tokenizer keeps its own size. Raises TokenizerError for
    an unknown kind, a missing file, or a tokenizer that produces ids the model has no rows for.
    """
    if kind in (None, "auto"):
        if vocab_size is None:
            raise TokenizerError("choosing a tokenizer needs the model's vocabulary size or a kind")
        kind = _auto_kind(vocab_size, path)
    if utf16:
        if kind not in ("bytes", "bytes-utf16le"):
            raise TokenizerError(f"utf16 applies to byte tokenizers only, not to {kind!r}")
        kind = "bytes-utf16le"
    if kind in ("bytes", "bytes-utf16le"):
        tok: Tokenizer = ByteTokenizer(utf16=kind == "bytes-utf16le")
    elif kind == "world":
        tok = WorldTokenizer(path, vocab_size=vocab_size or WORLD_VOCAB_SIZE)
    elif kind == "digits":
        tok = CharTokenizer()
    elif kind == "hf":
        if path is None:
            raise TokenizerError("the 'hf' tokenizer needs path= to a Hugging Face tokenizer JSON file (e.g. 20B_tokenizer.json)")
        tok = HFTokenizer(path, vocab_size)
    elif kind == "ids":
        if vocab_size is None:
            raise TokenizerError("the 'ids' tokenizer needs the model's vocabulary size")
        tok = IdsTokenizer(vocab_size)
    else:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(KINDS)}")
    n_ids = getattr(tok, "n_ids", tok.vocab_size)
    if vocab_size is not None and n_ids > vocab_size:
        raise TokenizerError(f"tokenizer {kind!r} produces ids up to {n_ids - 1} but the model has only {vocab_size} embedding rows")
    return tok
