"""The demo corpus: deterministic, ASCII, held-out phrasings really held out, retrieval probes exact."""
from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict

import pytest

from rwkv_core.demo import corpus as dc
from rwkv_core.demo.corpus import Fact

STREAM_BYTES = 2_000_000


@pytest.fixture(scope="module")
def stream() -> str:
    return dc.training_stream(0, STREAM_BYTES).decode("ascii")


# ------------------------------------------------------------------------------------------ determinism, format


def training_documents(seed: int, n: int, mix=None) -> list[str]:
    """The first `n` documents of a seed's training stream, as the corpus yields them."""
    return [d for _, d in itertools.islice(dc.iter_documents(seed, mix), n)]


def test_same_seed_same_bytes_other_seed_other_bytes():
    a = dc.training_stream(3, 100_000)
    assert a == dc.training_stream(3, 100_000)
    assert len(a) == 100_000
    assert a != dc.training_stream(4, 100_000)
    assert dc.training_stream(3, 40_000) == a[:40_000]  # a shorter stream is a prefix of a longer one
    assert training_documents(5, 30) == training_documents(5, 30)
    assert dc.retrieval_probes(1, 20) == dc.retrieval_probes(1, 20)
    assert dc.retrieval_probes(1, 20) != dc.retrieval_probes(2, 20)


def test_stream_is_documents_joined(stream):
    docs = training_documents(0, 200)
    assert stream.startswith(dc.SEPARATOR.join(docs))
    assert all(d and dc.SEPARATOR not in d for d in docs)  # the separator splits the stream back into documents


def test_ascii_only(stream):
    assert stream.isascii()
    assert dc.FACTS_PATH.read_bytes().isascii()
    for p in dc.eval_fact_prompts() + dc.train_fact_prompts():
        assert (p.prompt + p.answer).isascii()


def test_all_kinds_present_in_proportion(stream):
    s = dc.corpus_stats(0, 300_000)
    assert abs(sum(s["byte_share"].values()) - 1) < 1e-3
    for kind, target in dc.DEFAULT_MIX.items():
        assert abs(s["byte_share"][kind] - target) < 0.05, (kind, s["byte_share"])
    assert "CHECK:" in stream and "AGAIN:" in stream and "Counting" in stream


def test_mix_selects_kinds():
    docs = training_documents(0, 50, mix={"kv": 1.0})
    assert all(d.split("\n")[0] in dc.KV_HEADERS for d in docs)
    with pytest.raises(ValueError):
        training_documents(0, 5, mix={"poems": 1.0})


def test_stats_cli(capsys):
    dc.main(["--stats", "--bytes", "100000"])
    out = capsys.readouterr().out
    assert "facts:" in out and "held out" in out and "kv" in out


# ----------------------------------------------------------------------------------------------------- facts


def test_facts_file_is_sound():
    rels = dc.load_relations()
    assert len(rels) >= 4
    facts = dc.load_facts()
    assert len(facts) >= 200
    assert len({(f.relation, f.subject) for f in facts}) == len(facts)
    raw = json.loads(dc.FACTS_PATH.read_text())
    assert set(raw["relations"]) == {r.name for r in rels}
    for r in rels:
        assert 6 <= len(r.templates) <= 10
        objects = {f.object for f in r.facts}
        assert len(objects) <= 40, r.name  # moderate number of distinct answers
        for a in objects:  # greedy exact-match eval is unambiguous: no answer is a prefix of another
            assert not any(b != a and b.startswith(a + " ") for b in objects), (r.name, a)
        # the text between subject and object differs for every template: a held-out phrasing is new after the subject
        between = [t.split("{subject}")[1][: -len(" {object}.")] for t in r.templates]
        assert len(set(between)) == len(between), r.name


def test_every_prompt_has_one_answer():
    answers = defaultdict(set)
    for p in dc.eval_fact_prompts() + dc.train_fact_prompts():
        answers[p.prompt].add(p.answer)
    assert all(len(a) == 1 for a in answers.values())
    assert len(answers) == len(dc.eval_fact_prompts()) + len(dc.train_fact_prompts())


def test_eiffel_tower_example(stream):
    f = Fact("landmark_city", "The Eiffel Tower", "Paris")
    assert f in dc.load_facts()
    assert dc.templates("landmark_city")[dc.CANONICAL_TEMPLATE] == "{subject} is located in the city of {object}."
    assert dc.CANONICAL_TEMPLATE in dc.train_templates(f)
    assert "The Eiffel Tower is located in the city of Paris." in stream
    ex = dc.tracing_examples()[0]
    assert (ex["prompt"], ex["subject"], ex["answer"]) == (
        "The Eiffel Tower is located in the city of", "The Eiffel Tower", " Paris")


def test_tracing_examples_are_training_phrasings():
    train = {(p.prompt, p.answer) for p in dc.train_fact_prompts()}
    for ex in dc.tracing_examples():
        assert ex["subject"] in ex["prompt"] and ex["answer"].startswith(" ")
        assert (ex["prompt"], ex["answer"]) in train


def test_held_out_scheme():
    facts = dc.load_facts()
    evals, trains = dc.eval_fact_prompts(), dc.train_fact_prompts()
    assert len(evals) == dc.N_HELD_OUT * len(facts)
    used = defaultdict(set)
    for f in facts:
        held, tr = dc.held_out_templates(f), dc.train_templates(f)
        assert len(held) == dc.N_HELD_OUT and len(tr) >= 4
        assert not set(held) & set(tr) and dc.CANONICAL_TEMPLATE not in held
        used[f.relation].update(tr)
    for r in dc.load_relations():  # every template is a known form: trained with some subjects
        assert used[r.name] == set(range(len(r.templates))), r.name
    for p in evals + trains:
        assert p.answer == " " + p.fact.object and not p.prompt.endswith(" ")
    # exhaustively: no held-out sentence is part of any training sentence
    train_sents = [p.prompt + p.answer + "." for p in trains]
    for p in evals:
        s = p.prompt + p.answer
        assert not any(s in t for t in train_sents), s


def test_held_out_phrasings_never_in_training_stream(stream):
    for f in dc.load_facts():
        for i in dc.held_out_templates(f):
            p = dc.render(f, i)
            assert p.prompt + p.answer not in stream, p.prompt
            assert p.prompt not in stream, p.prompt
            # from the subject on, the held-out prompt was never seen either
            subj = dc.subject_form(dc.templates(f.relation)[i], f.subject)
            assert p.prompt[p.prompt.index(subj):] not in stream, p.prompt


def test_every_fact_trained_in_several_phrasings(stream):
    for f in dc.load_facts():
        seen = [i for i in dc.train_templates(f) if dc.sentence(f, i) in stream]
        assert len(seen) >= 2, (f, seen)


def test_fact_documents_use_only_training_phrasings():
    allowed = {p.prompt + p.answer + "." for p in dc.train_fact_prompts()}
    for d in training_documents(7, 400, mix={"facts": 1.0}):
        for s in re.split(r"(?<=\.)[ \n]", d):
            assert s in allowed, s


# ------------------------------------------------------------------------------------------------- retrieval


@pytest.mark.parametrize("kind,kv_format", [("kv", "word"), ("kv", "letter"), ("repeat", "word")])
def test_retrieval_probes_are_exact(kind, kv_format):
    probes = dc.retrieval_probes(0, 300, kind=kind, kv_format=kv_format)
    assert len(probes) == 300
    for p in probes:
        assert p.kind == kind and p.prompt.isascii() and len(p.prompt) + len(p.answer) < 200
        src = p.source_char_index
        assert p.prompt[src: src + len(p.answer)] == p.answer
        assert src + len(p.answer) <= p.query_char_index
        assert p.prompt[p.query_char_index:].startswith(p.key)
        assert p.prompt[: p.query_char_index].count(p.key) == 1  # the key occurs exactly once before the query
        assert p.prompt.count(p.answer) == 1  # the only copy of the answer is its source
        if kind == "kv" and kv_format == "word":
            assert p.prompt.endswith(p.key + "=") and p.prompt[src - len(p.key) - 1: src] == p.key + "="
            assert p.answer.isdigit() and p.key in dc.KV_KEYS
        elif kind == "kv":  # the key byte right before the value, and the prompt ends with the key
            assert len(p.key) == 1 and p.prompt.endswith("\n" + p.key) and p.prompt[src - 1] == p.key
            assert p.answer.isdigit() and p.prompt[src - 2] == "\n"
        else:
            assert p.prompt.endswith(" ") and p.prompt[src - 1] == " "
            assert p.answer in dc.REPEAT_WORDS


def test_repeat_words_are_not_substrings_of_each_other():
    w = dc.REPEAT_WORDS
    assert len(set(w)) == len(w)
    assert not any(a != b and a in b for a in w for b in w)
    assert not any(a.upper() in dc.REPEAT_HEADER + dc.REPEAT_AGAIN for a in w)


def test_kv_keys_are_not_substrings_of_each_other():
    w = dc.KV_KEYS
    assert len(set(w)) == len(w) and len(w) >= dc.KV_PAIRS[1]
    assert all(k.isalpha() and k.islower() for k in w)  # never inside an upper-case header or a digit value
    assert not any(a != b and a in b for a in w for b in w)


def test_kv_formats_share_the_stream_layout():
    """The "word" stream is what it always was (the committed models' first phase replays it); "letter" lines hold
    one key byte right before the value; an unknown format is refused."""
    word = training_documents(5, 40, mix={"kv": 1.0})
    letter = [doc for _, (_, doc) in zip(range(40), dc.iter_documents(5, {"kv": 1.0}, dc.KVLayout("letter")))]
    assert all("=" in d for d in word) and not any("=" in d for d in letter)
    for d in letter:
        lines = d.split("\n")[1:]
        assert all(len(x) == 3 and x[0] in dc.KV_LETTERS and x[1:].isdigit() for x in lines if x != "CHECK:")
    with pytest.raises(ValueError, match="kv format"):
        dc.training_stream(0, 1000, {"kv": 1.0}, dc.KVLayout("nope"))


def test_kv_pairs_set_the_pairs_per_episode_and_bad_layouts_are_refused():
    """KVLayout.pairs bounds the number of key/value lines of every episode (a lookup curriculum); the default is
    KV_PAIRS, which the probes use too."""
    for lo, hi in ((2, 2), (1, 3), (4, 6)):
        docs = [d for _, (_, d) in zip(range(200), dc.iter_documents(2, {"kv": 1.0}, dc.KVLayout("letter", (lo, hi))))]
        counts = [d.split("CHECK:")[0].count("\n") - 1 for d in docs]  # lines between the header and CHECK:
        assert min(counts) == lo and max(counts) == hi, (lo, hi, sorted(set(counts)))
    assert dc.KVLayout().pairs == dc.KV_PAIRS == (2, 6)
    assert dc.KVLayout("letter", [2, 2]) == dc.KVLayout("letter", (2, 2))  # a list (argparse) works as a tuple
    assert dc.training_stream(0, 500, {"kv": 1.0}, dc.KVLayout("letter", [2, 2]))
    for bad in ((0, 2), (3, 2), (1, 27)):
        with pytest.raises(ValueError, match="kv pairs"):
            dc.KVLayout("letter", bad)


def test_retrieval_episodes_in_stream_are_short():
    docs = training_documents(2, 500, mix={"kv": 0.5, "repeat": 0.5})
    assert all(len(d) < 200 for d in docs)
    with pytest.raises(ValueError):
        dc.retrieval_probes(0, 1, kind="nope")
