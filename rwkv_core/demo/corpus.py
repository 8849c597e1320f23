"""Generated training corpus for the project's own byte-level demo RWKV models.

The demo models are trained on text whose mechanisms we know, so that every dashboard page shows something true:

- facts (rwkv_core/demo/data/facts.json): real subject -> object facts in several relations, each stated with several
  templates that all end " {object}.". Per fact, two templates are HELD OUT of training (see `held_out_templates`),
  so `eval_fact_prompts()` measures recall that must transfer to phrasings never seen with that subject;
- retrieval episodes: a list of random `key=value` lines, then queries `key=` whose answer is copied from the list
  ("kv"), and random word sequences that are repeated ("repeat"): exact copying with a known source position;
- filler: simple templated narrative, lists, counting and arithmetic, so the model is a language model with short
  and long memory (a meaningful decay spectrum), not only a lookup table.

Everything is deterministic given the seed (Python's `random.Random`, string-seeded sub-streams, crc32 for the
held-out choice), ASCII only, and independent of the rest of the project. No Streamlit.
Run `python -m rwkv_core.demo.corpus --stats` for the corpus statistics and sample documents.
"""
from __future__ import annotations

import argparse
import itertools
import json
import random
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Optional

FACTS_PATH = Path(__file__).resolve().parent / "data" / "facts.json"
SEPARATOR = "\n\n"  # between documents in `training_stream`
CANONICAL_TEMPLATE = 0  # always a training phrasing (the RWKV paper's Eiffel Tower prompt is one)
N_HELD_OUT = 2  # templates per fact kept out of training
KINDS = ("facts", "kv", "repeat", "filler")
# Target share of each kind in the training bytes (approximate: kinds are drawn per document, weighted by the
# inverse of their mean document length). Facts get half: at ~56 bytes a sentence, 10 MB of training gives each of
# the ~325 facts ~280 statements (~45 per training phrasing).
DEFAULT_MIX: dict[str, float] = {"facts": 0.50, "kv": 0.15, "repeat": 0.05, "filler": 0.30}

KV_HEADERS = ("CODES:", "TABLE:", "MEMO:", "LIST:")  # upper case: can never contain a lower-case key
KV_QUERY_HEADER = "CHECK:"
# Keys are words from a fixed vocabulary (so the model can learn each key's identity, as it learns a word's) and
# values are random digits (never memorisable: a probe's answer can only come from the list). Random letter
# trigrams as keys were not learnt by a 1M-parameter model in ~3M tokens; known words were (session-2 pilot).
KV_KEYS = (  # no key is a substring of another, so "key=" occurs exactly where it was put
    "cat", "dog", "fox", "owl", "bee", "cow", "pig", "rat", "yak", "elk", "ant", "bat", "hen", "eel", "ram",
    "gnu", "jay", "emu", "cod", "ape", "sun", "map", "cup", "pen", "box", "key", "hat", "bus", "car", "jet",
    "gem", "ink", "jar", "kit", "log", "mud", "net", "oak", "pod", "rug", "tin", "urn", "van", "web", "zip",
    "fig", "yam", "ivy",
)
KV_LETTERS = "abcdefghijklmnopqrstuvwxyz"
# Two layouts of a kv line: "word" ("cat=41": a word key, "=", the value) and "letter" ("c41": a one-byte key right
# before the value, so the key is the value's previous token). A 1M-parameter model learnt "letter" lookup in 3 M
# bytes but not "word" in 17 M (the key must first be gathered from several bytes); the demo models learn "word"
# lines in their first phase and "letter" lines in a later one (see models/README.md).
KV_FORMATS = ("word", "letter")
KV_VALUE_DIGITS = 2
KV_PAIRS = (2, 6)  # min, max pairs per episode (probes always use this range)


@dataclass(frozen=True)
class KVLayout:
    """How the training stream writes kv episodes: the line layout (one of KV_FORMATS) and the range of pairs per
    episode. Fewer pairs make a lookup curriculum: with two pairs a model finds the key-value binding much sooner
    (a v6 model did in 1 M bytes where 2-6 pairs left it at chance; models/README.md)."""

    format: str = "word"
    pairs: tuple[int, int] = KV_PAIRS

    def __post_init__(self):
        object.__setattr__(self, "pairs", tuple(self.pairs))  # hashable (the layout keys a cache) whatever was given
        if self.format not in KV_FORMATS:
            raise ValueError(f"kv format must be one of {KV_FORMATS}, not {self.format!r}")
        lo, hi = self.pairs
        if not 1 <= lo <= hi <= len(KV_LETTERS):
            raise ValueError(f"kv pairs must be 1 <= min <= max <= {len(KV_LETTERS)}, not {self.pairs}")
REPEAT_HEADER, REPEAT_AGAIN = "WORDS:", "AGAIN:"
REPEAT_WORDS = (  # no word is a substring of another, so a word occurs exactly where it was put
    "apple", "bread", "chair", "dream", "eagle", "flame", "grape", "horse", "ivory", "jelly", "knife", "lemon",
    "mango", "night", "ocean", "piano", "queen", "river", "stone", "tiger", "uncle", "voice", "whale", "yacht",
    "zebra", "cloud", "honey", "pearl", "robot", "sugar", "tulip", "wagon", "brick", "coral", "daisy", "fence",
    "glove", "hatch", "igloo", "juice", "koala", "lily", "maple", "nest", "olive", "pizza", "quilt", "raven",
    "salad", "torch", "vase", "wheat", "melon", "bison", "cabin", "drum", "frost", "gecko", "moose", "plum",
)
REPEAT_LEN = (4, 10)


@dataclass(frozen=True)
class Fact:
    """One real fact: `subject` has `object` under `relation` (e.g. landmark_city: The Eiffel Tower -> Paris)."""

    relation: str
    subject: str
    object: str


@dataclass(frozen=True)
class Relation:
    """A relation's templates (index 0 canonical) and facts, as read from facts.json."""

    name: str
    description: str
    templates: tuple[str, ...]
    facts: tuple[Fact, ...]


class FactPrompt(NamedTuple):
    """A completion task: `prompt` (no trailing space) is followed by `answer` (" " + object) and then "."."""

    prompt: str
    answer: str
    fact: Fact


@dataclass(frozen=True)
class RetrievalProbe:
    """A copying task: the greedy continuation of `prompt` should be `answer`, copied from the prompt.

    `prompt[source_char_index:source_char_index + len(answer)] == answer`: the source is the first character of the
    value in the list ("kv") or of the word's first occurrence ("repeat"). `key` is the cue that occurs exactly once
    before the query part: the kv key, or the word just before the answer ("repeat").
    `query_char_index` is where the query part starts (the line "key=" for kv, the word `key` for repeat).
    """

    prompt: str
    answer: str
    source_char_index: int
    key: str
    kind: str = "kv"
    query_char_index: int = 0


# ------------------------------------------------------------------------------------------------------ facts


@lru_cache(maxsize=None)
def load_relations() -> tuple[Relation, ...]:
    """The relations of facts.json, validated (ASCII, every template ends ' {object}.', one object per subject)."""
    data = json.loads(FACTS_PATH.read_text(encoding="ascii"))
    out = []
    for name, r in data["relations"].items():
        tmpl = tuple(r["templates"])
        for t in tmpl:
            if t.count("{subject}") != 1 or not t.endswith(" {object}.") or t.count("{object}") != 1:
                raise ValueError(f"facts.json: a template of {name} must hold {{subject}} once and end "
                                 f"' {{object}}.': {t!r}")
        if len(tmpl) < N_HELD_OUT + 3:
            raise ValueError(f"facts.json: {name} needs at least {N_HELD_OUT + 3} templates")
        facts = tuple(Fact(name, f["subject"], f["object"]) for f in r["facts"])
        subjects = [f.subject for f in facts]
        if len(set(subjects)) != len(subjects):
            raise ValueError(f"facts.json: {name} lists a subject twice")
        out.append(Relation(name, r["description"], tmpl, facts))
    return tuple(out)


def load_facts() -> list[Fact]:
    """Every fact of facts.json, in file order."""
    return list(_all_facts())


@lru_cache(maxsize=None)
def _all_facts() -> tuple[Fact, ...]:
    return tuple(f for r in load_relations() for f in r.facts)


@lru_cache(maxsize=None)
def _relation(name: str) -> Relation:
    for r in load_relations():
        if r.name == name:
            return r
    raise KeyError(f"unknown relation {name!r}")


def templates(relation: str) -> tuple[str, ...]:
    """The templates of a relation; index 0 is the canonical one."""
    return _relation(relation).templates


@lru_cache(maxsize=None)
def held_out_templates(fact: Fact) -> tuple[int, ...]:
    """Indices of the templates never used for this fact in training (sorted).

    The canonical template 0 is always trained; the held-out pair is one of the C(T-1, 2) pairs of the others,
    chosen by crc32 of (relation, subject), so every template is trained with most subjects (and so is a known
    form) but each subject is evaluated with two phrasings it never appeared in.
    """
    n = len(templates(fact.relation))
    pairs = list(itertools.combinations(range(1, n), N_HELD_OUT))
    return pairs[zlib.crc32(f"{fact.relation}\0{fact.subject}".encode()) % len(pairs)]


@lru_cache(maxsize=None)
def train_templates(fact: Fact) -> tuple[int, ...]:
    """Indices of the templates this fact is stated with in training."""
    held = held_out_templates(fact)
    return tuple(i for i in range(len(templates(fact.relation))) if i not in held)


def subject_form(template: str, subject: str) -> str:
    """The subject as written in a template: a leading "The " becomes "the " unless it starts the sentence."""
    if subject.startswith("The ") and not template.startswith("{subject}"):
        return "t" + subject[1:]
    return subject


def render(fact: Fact, template_index: int) -> FactPrompt:
    """The fact in one template: prompt up to (not including) the space before the object, answer " object"."""
    t = templates(fact.relation)[template_index]
    head = t[: -len(" {object}.")]
    return FactPrompt(head.replace("{subject}", subject_form(t, fact.subject)), " " + fact.object, fact)


def sentence(fact: Fact, template_index: int) -> str:
    """The full sentence: prompt + answer + "."."""
    p = render(fact, template_index)
    return p.prompt + p.answer + "."


def eval_fact_prompts() -> list[FactPrompt]:
    """Held-out phrasings: two per fact, each never used with that subject in training (file order, template order)."""
    return [render(f, i) for f in load_facts() for i in held_out_templates(f)]


def train_fact_prompts() -> list[FactPrompt]:
    """The training phrasings of every fact, for comparison with `eval_fact_prompts`."""
    return [render(f, i) for f in load_facts() for i in train_templates(f)]


def tracing_examples() -> list[dict]:
    """Prompts for causal tracing, in canonical (training) phrasings: {"prompt", "subject", "answer"}.

    The first is the RWKV paper's "The Eiffel Tower is located in the city of" -> " Paris". `subject` is a
    substring of `prompt` (as written there), `answer` starts with a space.
    """
    picks = [
        ("landmark_city", "The Eiffel Tower"), ("landmark_city", "The Colosseum"), ("landmark_city", "Big Ben"),
        ("landmark_city", "The Statue of Liberty"), ("city_country", "Tokyo"), ("city_country", "Munich"),
        ("country_capital", "France"), ("country_capital", "Japan"), ("country_language", "Germany"),
        ("country_language", "Brazil"), ("person_field", "Marie Curie"), ("person_field", "Wolfgang Amadeus Mozart"),
        ("company_country", "Toyota"), ("company_country", "Ferrari"),
    ]
    by_key = {(f.relation, f.subject): f for f in load_facts()}
    out = []
    for key in picks:
        f = by_key[key]
        p = render(f, CANONICAL_TEMPLATE)
        out.append({"prompt": p.prompt, "subject": subject_form(templates(f.relation)[0], f.subject),
                    "answer": p.answer, "relation": f.relation})
    return out


def _fact_document(rng: random.Random) -> str:
    """1-4 fact sentences in training phrasings, distinct subjects, facts drawn uniformly (equal exposure)."""
    facts = _all_facts()
    n = rng.choice((1, 1, 2, 2, 3, 4))
    chosen: list[Fact] = []
    while len(chosen) < n:
        f = rng.choice(facts)
        if all(f.subject != c.subject for c in chosen):
            chosen.append(f)
    sents = [sentence(f, rng.choice(train_templates(f))) for f in chosen]
    return (" " if rng.random() < 0.6 else "\n").join(sents)


# -------------------------------------------------------------------------------------------------- retrieval


def _kv_episode(rng: random.Random, fmt: str = "word",
                pairs: tuple[int, int] = KV_PAIRS) -> tuple[str, list[tuple[str, str, int, int]]]:
    """A kv episode and its queries [(key, value, source index of the value, start of the query line)].

    Layout: HEADER, then lines "key=value" (distinct keys from KV_KEYS, distinct 2-digit values), then CHECK:, then
    queries "key=value" for distinct keys in random order. Upper-case headers and digit values cannot contain a key,
    so each key occurs once in the list and once in the queries.
    """
    n = rng.randint(*pairs)
    if fmt not in KV_FORMATS:
        raise ValueError(f"kv format must be one of {KV_FORMATS}, not {fmt!r}")
    keys = rng.sample(KV_KEYS if fmt == "word" else KV_LETTERS, n)
    sep = "=" if fmt == "word" else ""
    values: list[str] = []
    while len(values) < n:  # distinct, so the answer's only copy in the prompt is its source
        v = "".join(rng.choice("0123456789") for _ in range(KV_VALUE_DIGITS))
        if v not in values:
            values.append(v)
    text = rng.choice(KV_HEADERS) + "\n"
    src = {}
    for k, v in zip(keys, values):
        src[k] = len(text) + len(k) + len(sep)
        text += f"{k}{sep}{v}\n"
    text += KV_QUERY_HEADER
    order = rng.sample(range(n), rng.randint(1, n))
    queries = []
    for i in order:
        text += "\n"
        queries.append((keys[i], values[i], src[keys[i]], len(text)))
        text += f"{keys[i]}{sep}{values[i]}"
    return text, queries


def _repeat_episode(rng: random.Random) -> tuple[str, list[str], list[int], int]:
    """A repeat episode: WORDS: w1 .. wn, newline, AGAIN: w1 .. wn. Returns text, words, their first-copy starts,
    and where the second copy starts."""
    words = rng.sample(REPEAT_WORDS, rng.randint(*REPEAT_LEN))
    text = REPEAT_HEADER
    starts = []
    for w in words:
        text += " "
        starts.append(len(text))
        text += w
    text += "\n" + REPEAT_AGAIN + " "
    return text + " ".join(words), words, starts, len(text)


def retrieval_probes(seed: int, n: int, kind: str = "kv", kv_format: str = "word") -> list[RetrievalProbe]:
    """`n` copying probes drawn like the training episodes (fresh random keys and values, so never memorised).

    kind "kv": the prompt is an episode cut right after the first query's "key="; the answer is its value.
    kind "repeat": the prompt is an episode cut inside the second copy, after "word " (1 to n-1 words repeated);
    the answer is the next word.
    """
    if kind not in ("kv", "repeat"):
        raise ValueError(f"kind must be 'kv' or 'repeat', not {kind!r}")
    rng = random.Random(f"probe:{kind}:{seed}")
    out = []
    for _ in range(n):
        if kind == "kv":
            text, queries = _kv_episode(rng, kv_format)
            key, value, src, qstart = queries[0]
            prompt = text[: qstart + len(key) + (1 if kv_format == "word" else 0)]
            out.append(RetrievalProbe(prompt, value, src, key, "kv", qstart))
        else:
            text, words, starts, again = _repeat_episode(rng)
            j = rng.randint(1, len(words) - 1)
            prompt = text[:again] + " ".join(words[:j]) + " "
            out.append(RetrievalProbe(prompt, words[j], starts[j], words[j - 1], "repeat",
                                      again + sum(len(w) + 1 for w in words[: j - 1])))
    return out


# ----------------------------------------------------------------------------------------------------- filler

_FEMALE = ("Anna", "Clara", "Emma", "Iris", "Lena", "Nora", "Paula", "Tina", "Wendy", "Zoe", "Mia", "Rosa", "Lucy",
           "Ella")
_MALE = ("Ben", "Felix", "Henry", "Jack", "Oscar", "Sam", "Tom", "Omar", "Ravi", "Owen", "Luke", "Finn", "Noah", "Eli")
_PLACES = ("the market", "the library", "the park", "the school", "the bakery", "the station", "the river",
           "the garden", "the museum", "the beach", "the farm", "the harbor", "the hill", "the forest", "the lake",
           "the shop", "the post office", "the old bridge")
_ITEMS = (("apple", "apples"), ("book", "books"), ("cup", "cups"), ("pencil", "pencils"), ("egg", "eggs"),
          ("flower", "flowers"), ("letter", "letters"), ("shell", "shells"), ("stone", "stones"),
          ("ticket", "tickets"), ("coin", "coins"), ("candle", "candles"), ("orange", "oranges"),
          ("cookie", "cookies"), ("map", "maps"), ("bottle", "bottles"))
_GROCERIES = ("bread", "milk", "eggs", "butter", "rice", "cheese", "tea", "salt", "beans", "soup", "honey", "jam",
              "carrots", "potatoes", "onions", "flour", "sugar", "lemons")
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
           "November", "December")
_WEATHER = ("sunny", "rainy", "cold", "windy", "warm", "cloudy", "foggy", "snowy")
_SKY = ("blue", "grey", "clear", "dark", "pale")
_COLORS = ("red", "blue", "green", "yellow", "white", "black", "brown", "orange", "purple", "grey")
_THINGS = ("bike", "hat", "bag", "kite", "boat", "coat", "lamp", "box", "scarf", "cart")
_TOPICS = ("the weather", "their families", "a new song", "the harvest", "an old story", "the next holiday",
           "a funny dog", "the price of bread", "a long walk", "the stars")
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def _person(rng: random.Random) -> tuple[str, str, str, str]:
    """(name, subject pronoun, object pronoun, possessive)."""
    if rng.random() < 0.5:
        return rng.choice(_FEMALE), "she", "her", "her"
    return rng.choice(_MALE), "he", "him", "his"


def _count(n: int, item: tuple[str, str], words: bool, more: bool = False) -> str:
    """"3 apples", "three apples", "1 more apple"."""
    num = _NUMBER_WORDS[n] if words and n < len(_NUMBER_WORDS) else str(n)
    return f"{num} {'more ' if more else ''}{item[0] if n == 1 else item[1]}"


def _narrative(rng: random.Random) -> str:
    """A short story with a named character who comes back, and a running count that adds up."""
    name, he, him, his = _person(rng)
    friend = name
    while friend == name:
        friend = rng.choice(_FEMALE + _MALE)
    place, place2 = rng.sample(_PLACES, 2)
    day, item = rng.choice(_DAYS), rng.choice(_ITEMS)
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    words = rng.random() < 0.5
    s = [rng.choice((
        f"On {day} morning, {name} walked to {place}.",
        f"{name} woke up early on {day} and went to {place}.",
        f"It was a {rng.choice(_WEATHER)} {day}, and {name} went to {place}.",
    ))]
    if rng.random() < 0.5:
        s.append(f"The sky was {rng.choice(_SKY)} and the wind was {rng.choice(('calm', 'strong', 'soft'))}.")
    s.append(f"At {place}, {he} bought {_count(a, item, words)}.")
    if rng.random() < 0.5:
        s.append(f"Then {name} met {friend} near {place2}, and they talked about {rng.choice(_TOPICS)}.")
    else:
        s.append(f"On the way home, {name} met {friend}.")
    s.append(f"{friend} gave {him} {_count(b, item, words, more=True)}.")
    if rng.random() < 0.5:
        s.append(f"{friend} also had a {rng.choice(_COLORS)} {rng.choice(_THINGS)}.")
    s.append(f"In the end, {name} had {_count(a + b, item, False)}.")
    s.append(rng.choice((f"At {rng.randint(1, 12)} o'clock, {name} went home.", "It was a good day.",
                         f"{name} was happy.", f"The next day {he} went back to {place}.")))
    return " ".join(s)


def _sequence_line(rng: random.Random) -> str:
    """A list or a sequence with a rule: counting, days, months, letters, a shopping list."""
    k = rng.randint(4, 9)
    c = rng.randrange(6)
    if c == 0:
        start = rng.randint(0, 90)
        return "Counting up: " + ", ".join(str(start + i) for i in range(k)) + "."
    if c == 1:
        step = rng.choice((2, 5, 10))
        return f"Counting by {_NUMBER_WORDS[step] if step < 11 else step}s: " + \
            ", ".join(str(step * (i + 1)) for i in range(k)) + "."
    if c == 2:
        i0 = rng.randrange(7)
        return "The days go " + ", ".join(_DAYS[(i0 + i) % 7] for i in range(min(k, 7))) + "."
    if c == 3:
        i0 = rng.randrange(12)
        return "The months go " + ", ".join(_MONTHS[(i0 + i) % 12] for i in range(k)) + "."
    if c == 4:
        i0 = rng.randrange(26 - k)
        return "The letters go " + ", ".join(chr(97 + i0 + i) for i in range(k)) + "."
    return "Shopping list: " + ", ".join(rng.sample(_GROCERIES, k - 2)) + "."


def _arithmetic_line(rng: random.Random) -> str:
    """True sums, differences and small products."""
    a, b = rng.randint(0, 20), rng.randint(0, 20)
    op = rng.randrange(3)
    if op == 0:
        return f"{a} plus {b} is {a + b}."
    if op == 1:
        a, b = max(a, b), min(a, b)
        return f"{a} minus {b} is {a - b}."
    a, b = rng.randint(1, 10), rng.randint(1, 10)
    return f"{a} times {b} is {a * b}."


def _description(rng: random.Random) -> str:
    """Two or three linked sentences about a person's thing (a noun and its colour come back)."""
    name, he, _, his = _person(rng)
    thing, color = rng.choice(_THINGS), rng.choice(_COLORS)
    s = [f"{name} has a {color} {thing}.", rng.choice((f"The {thing} is {rng.choice(('new', 'old', 'small', 'big'))}.",
                                                       f"{he.capitalize()} keeps it at {rng.choice(_PLACES)}."))]
    if rng.random() < 0.6:
        s.append(f"Everyone knows that {his} {thing} is {color}.")
    return " ".join(s)


def _filler_document(rng: random.Random) -> str:
    """A story, or a few lines of lists, arithmetic and descriptions."""
    if rng.random() < 0.45:
        return _narrative(rng)
    makers: tuple[Callable[[random.Random], str], ...] = (_sequence_line, _arithmetic_line, _description)
    return "\n".join(rng.choice(makers)(rng) for _ in range(rng.randint(2, 5)))


# ----------------------------------------------------------------------------------------------- the corpus

_MAKERS: dict[str, Callable[[random.Random], str]] = {
    "facts": _fact_document,
    "repeat": lambda rng: _repeat_episode(rng)[0],
    "filler": _filler_document,
}


def _make(kind: str, rng: random.Random, kv: KVLayout) -> str:
    """One document of a kind; kv episodes as `kv` says."""
    return _kv_episode(rng, kv.format, kv.pairs)[0] if kind == "kv" else _MAKERS[kind](rng)


@lru_cache(maxsize=None)
def _mean_length(kind: str, kv: KVLayout = KVLayout()) -> float:
    """Mean document length of a kind (fixed sample), to turn byte shares into document probabilities."""
    rng = random.Random(f"mean-length:{kind}")
    return sum(len(_make(kind, rng, kv)) for _ in range(2000)) / 2000


def _kind_weights(mix: Optional[Mapping[str, float]], kv: KVLayout = KVLayout()) -> tuple[list[str], list[float]]:
    mix = dict(DEFAULT_MIX if mix is None else mix)
    bad = set(mix) - set(KINDS)
    if bad or not any(w > 0 for w in mix.values()) or any(w < 0 for w in mix.values()):
        raise ValueError(f"mix needs non-negative weights over {KINDS}, some positive; got {mix}")
    kinds = [k for k in KINDS if mix.get(k, 0) > 0]
    return kinds, [mix[k] / _mean_length(k, kv) for k in kinds]


def iter_documents(seed: int, mix: Optional[Mapping[str, float]] = None,
                   kv: KVLayout = KVLayout()) -> Iterator[tuple[str, str]]:
    """Endless (kind, document) pairs for a seed; `mix` gives byte shares per kind (default DEFAULT_MIX)."""
    kinds, weights = _kind_weights(mix, kv)
    rng = random.Random(f"corpus:{seed}")
    while True:
        kind = rng.choices(kinds, weights)[0]
        yield kind, _make(kind, rng, kv)


def training_stream(seed: int, n_bytes: int, mix: Optional[Mapping[str, float]] = None,
                    kv: KVLayout = KVLayout()) -> bytes:
    """Exactly `n_bytes` of ASCII: the seed's documents joined with SEPARATOR (a prefix of any longer stream)."""
    parts, total = [], 0
    for i, (_, doc) in enumerate(iter_documents(seed, mix, kv)):
        if total >= n_bytes:
            break
        piece = doc if i == 0 else SEPARATOR + doc
        parts.append(piece)
        total += len(piece)
    return "".join(parts)[:n_bytes].encode("ascii")


# ------------------------------------------------------------------------------------------------ statistics


def corpus_stats(seed: int = 0, n_bytes: int = 1_000_000, mix: Optional[Mapping[str, float]] = None) -> dict:
    """Counts of facts, relations, templates, prompts, and the byte share of each kind in an `n_bytes` sample."""
    rels = load_relations()
    by_kind = {k: 0 for k in KINDS}
    docs_by_kind = {k: 0 for k in KINDS}
    total = 0
    for kind, doc in iter_documents(seed, mix):
        if total >= n_bytes:
            break
        by_kind[kind] += len(doc) + len(SEPARATOR)
        docs_by_kind[kind] += 1
        total += len(doc) + len(SEPARATOR)
    return {
        "facts": len(load_facts()),
        "distinct_subjects": len({f.subject for f in load_facts()}),
        "relations": {r.name: {"facts": len(r.facts), "distinct_objects": len({f.object for f in r.facts}),
                               "templates": len(r.templates)} for r in rels},
        "templates_per_fact": {"train": min(len(train_templates(f)) for f in load_facts()), "held_out": N_HELD_OUT},
        "train_prompts": len(train_fact_prompts()),
        "eval_prompts": len(eval_fact_prompts()),
        "sample_bytes": total,
        "documents": sum(docs_by_kind.values()),
        "byte_share": {k: round(v / total, 4) for k, v in by_kind.items()},
        "mean_doc_bytes": {k: round(by_kind[k] / docs_by_kind[k] - len(SEPARATOR), 1) if docs_by_kind[k] else 0.0
                           for k in KINDS},
    }


def _print_stats(seed: int, n_bytes: int, samples: int) -> None:
    s = corpus_stats(seed, n_bytes)
    print(f"facts: {s['facts']} ({s['distinct_subjects']} distinct subjects) in {len(s['relations'])} relations")
    for name, r in s["relations"].items():
        print(f"  {name:18s} {r['facts']:4d} facts, {r['distinct_objects']:3d} distinct objects, "
              f"{r['templates']} templates")
    t = s["templates_per_fact"]
    print(f"templates per fact: {t['train']} train, {t['held_out']} held out "
          f"(template {CANONICAL_TEMPLATE} always trained); prompts: {s['train_prompts']} train, "
          f"{s['eval_prompts']} held-out eval")
    print(f"sample: {s['sample_bytes']} bytes, {s['documents']} documents (seed {seed})")
    for k in KINDS:
        print(f"  {k:7s} {100 * s['byte_share'][k]:5.1f}% of bytes, mean document {s['mean_doc_bytes'][k]} bytes")
    docs = iter_documents(seed)
    seen: dict[str, int] = {}
    print(f"\nsample documents (seed {seed}):")
    for kind, doc in docs:
        if seen.get(kind, 0) >= samples:
            if all(seen.get(k, 0) >= samples for k in KINDS):
                break
            continue
        seen[kind] = seen.get(kind, 0) + 1
        print(f"--- {kind}\n{doc}")
    print("\nheld-out eval prompts (first 4):")
    for p in eval_fact_prompts()[:4]:
        print(f"  {p.prompt!r} -> {p.answer!r}")
    print("retrieval probe:")
    p = retrieval_probes(seed, 1)[0]
    print(f"  {p.prompt!r} -> {p.answer!r} (source index {p.source_char_index}, key {p.key!r})")


def main(argv: Optional[list[str]] = None) -> None:
    """`python -m rwkv_core.demo.corpus --stats [--seed S] [--bytes N] [--samples K]`."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stats", action="store_true", help="print corpus statistics and sample documents")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bytes", type=int, default=1_000_000, help="sample size for the byte shares")
    ap.add_argument("--samples", type=int, default=1, help="sample documents per kind")
    args = ap.parse_args(argv)
    if not args.stats:
        ap.print_help()
        return
    _print_stats(args.seed, args.bytes, args.samples)


if __name__ == "__main__":
    main()
