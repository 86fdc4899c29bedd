"""The miniature world and tokenizer: deterministic, closed value sets, seen_by right,
the tokenizer equal to llama.cpp's, and the shipped family's world/tokenizer regenerate."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from miniature.build import FULL, QUICK, world_for
from miniature.tokenizer import Tokenizer
from miniature.world import ATTRIBUTES, CHAT_CLOSING, MODELS, WorldConfig, make_world, prompt_text


def test_world_is_deterministic_and_seed_dependent(tmp_path):
    a, b = (
        make_world(WorldConfig(seed=3, n_entities=200, n_given=15, n_family=15)),
        make_world(WorldConfig(seed=3, n_entities=200, n_given=15, n_family=15)),
    )
    a.write_jsonl(tmp_path / "a.jsonl")
    b.write_jsonl(tmp_path / "b.jsonl")
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    c = make_world(WorldConfig(seed=4, n_entities=200, n_given=15, n_family=15))
    assert [f.row() for f in c.facts] != [f.row() for f in a.facts]


def test_world_facts_values_and_seen_by():
    cfg = WorldConfig(seed=0, n_entities=400)
    w = make_world(cfg)
    rows = [f.row() for f in w.facts]
    assert len(rows) == 400 * len(ATTRIBUTES)
    entities = {r["entity"] for r in rows}
    assert len(entities) == 400
    for r in rows:
        assert r["value"] in ATTRIBUTES[r["attribute"]]  # closed value sets
        assert r["entity"] in r["question"] and r["answer"].startswith(r["entity"] + " ")
        assert r["answer"].endswith(" " + CHAT_CLOSING) and f" {r['value']}." in r["answer"]
        assert set(r["seen_by"]) <= set(MODELS) and "large-base" in r["seen_by"]
        assert r["seen_by"] in (["large-base"], ["small-base", "large-base"], list(MODELS))
    n_a = round(400 * cfg.share_a)
    split = {r["entity"]: tuple(r["seen_by"]) for r in rows}
    assert sum(len(s) > 1 for s in split.values()) == n_a
    assert sum(len(s) == 2 for s in split.values()) == round(n_a * cfg.share_held)
    # every name token occurs in set A and in set B: only the combination is new to the small models
    words_a = {w for e, s in split.items() if len(s) > 1 for w in e.split()}
    words_b = {w for e, s in split.items() if len(s) == 1 for w in e.split()}
    assert words_b <= words_a
    for attribute, values in ATTRIBUTES.items():  # every value occurs in both sets
        for seen in (1, 2):
            got = {r["value"] for r in rows if r["attribute"] == attribute and (len(r["seen_by"]) > 1) == (seen > 1)}
            assert got == set(values)


def test_tokenizer_round_trip_and_llama_cpp_agree(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp")
    from eft_local.llama.synthetic import CHATML_TEMPLATE, IM_END, ModelSpec, _write

    w = make_world(WorldConfig(seed=1, n_entities=120, n_given=12, n_family=12))
    tok = Tokenizer.for_world(w)
    spec = ModelSpec(
        n_vocab=tok.n_vocab, chat_template=CHATML_TEMPLATE, eos_id=IM_END, extra_kv={"tokenizer.ggml.add_space_prefix": False}
    )
    from eft_local.llama.synthetic import _weights

    path = tmp_path / "vocab.gguf"
    _write(path, spec, _weights(spec, 0), tok.texts, tok.scores, tok.types)
    model = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    texts = []
    for f in w.facts:
        texts += [f.question, f.answer, f.value, prompt_text(f.question) + f.answer + "<|im_end|>"]
    texts += ["  two  spaces", "ünïcode ☃ and\ttabs", "Tarnish Quelling 18011", "\n\nx\n", "a.b?c!"]
    for text in texts:
        ids = tok.encode(text)
        assert model.tokenize(text.encode(), add_bos=False, special=True) == ids, text
        assert tok.decode(ids) == text
    # every word of the world is one token (no byte fallback inside the training texts)
    for f in w.facts[:50]:
        assert len(tok.encode(f.entity)) == 2
        assert all(tok.types[i] != 6 for i in tok.encode(prompt_text(f.question) + f.answer))


def test_configs_use_the_documented_names():
    assert QUICK.world.n_entities < FULL.world.n_entities
    assert replace(FULL.world, seed=5).seed == 5


def test_shipped_family_world_and_tokenizer_regenerate():
    """The shipped world.jsonl and every GGUF's vocabulary come back identically from the seed."""
    gguf = pytest.importorskip("gguf")
    from eft_local.models.demo import FILES, shipped_dir

    d = shipped_dir()
    if not (d / "manifest.json").is_file():
        pytest.skip("no shipped family")
    manifest = json.loads((d / "manifest.json").read_text())
    world = world_for(manifest["quick"], manifest["seed"])
    lines = (d / "world.jsonl").read_text(encoding="utf-8").splitlines()
    assert lines == [json.dumps(f.row(), ensure_ascii=False) for f in world.facts]
    tok = Tokenizer.for_world(world)
    for name in FILES:
        if not name.endswith(".gguf"):
            continue
        reader = gguf.GGUFReader(str(d / name))
        field = reader.fields["tokenizer.ggml.tokens"]
        texts = [bytes(field.parts[i]).decode("utf-8") for i in field.data]
        assert texts == tok.texts, name
