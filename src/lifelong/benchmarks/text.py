"""Text benchmarks: 20 Newsgroups in pairs of classes (CTR's 20News) and sentiment across domains.

Inputs are BERT WordPiece token ids, int64 ``(N, max_length)`` (``[CLS] ... [SEP]``, padded with
0), so ``stream.input_shape == (max_length,)``; they come from
:func:`lifelong.data.text.load_tokenized`, tokenised once per (source, split, vocabulary,
max_length) and cached. The default vocabulary is the MiniLM-L6 encoder's; ``vocab_file`` gives
another BERT ``vocab.txt``.

``20news`` (Ke et al., "Achieving forgetting prevention and knowledge transfer in continual
learning", NeurIPS 2021, and its code github ZixuanKe/PyContinual,
``src/dataloaders/newsgroup/bert.py``): 10 tasks of 2 newsgroups each, task-incremental (each
task scored over its own 2 units) by default, ``max_length`` 128 as there. CTR pairs consecutive
classes of its fixed class list (:data:`CTR_CLASS_ORDER`), which is the default here
(``class_seed=None``); an integer ``class_seed`` pairs the classes of a seeded permutation
instead. CTR then runs the 10 tasks in random orders; here the order is the pairs' order and
other orders come from ``Stream.reordered`` or a run's ``order``. CTR splits the 19,997-document
version 80/10/10 itself; here the corpus's own train / test split is used (11,293 / 7,528
documents of the "bydate" single-label version). ``scenario="class"`` predicts over all 20 units
with no task id.

``tweet-domains``: one task per domain of the aggregated tweets (cars, airline, coachella,
deflategate, apple, claritin), 3 sentiments each (a DSC-like domain-incremental sentiment
benchmark). ``scenario="task"`` gives every domain its own 3 units; ``"domain"`` shares one
3-unit head. The corpus has no split: ``test_fraction`` of every (domain, sentiment) is held out
with ``split_seed`` (the rule of :func:`lifelong.data.digits.stratified_split`), fixed across
run seeds by default. ``include_rotten_tomatoes`` appends a 7th task of movie-review snippets
labelled rotten -> negative and fresh -> positive (it has no neutral examples): its own 2 units
in the task scenario, the shared sentiment head in the domain scenario.

Caps (``train_per_task`` / ``test_per_task``) take a stratified subsample (every class gets an
example before any gets two) drawn with a generator seeded from ``seed``, the benchmark, the
task and the split, so one task's draw does not depend on the others.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Literal

import numpy as np
import torch

from lifelong.benchmarks.mixture import stratified_subsample
from lifelong.benchmarks.registry import BENCHMARKS
from lifelong.benchmarks.stream import Stream, build_stream
from lifelong.params import Range

#: CTR's class list (PyContinual ``classes_20newsgroup``); consecutive pairs are its 10 tasks.
CTR_CLASS_ORDER = (
    "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med",
    "sci.space", "misc.forsale", "talk.politics.misc", "talk.politics.guns",
    "talk.politics.mideast", "talk.religion.misc", "alt.atheism", "soc.religion.christian",
)
TWEET_DOMAINS = ("cars", "airline", "coachella", "deflategate", "apple", "claritin")
TweetDomain = Literal["cars", "airline", "coachella", "deflategate", "apple", "claritin"]
ROTTEN_TOMATOES_TASK = "rotten-tomatoes"
#: Rotten Tomatoes' labels (rotten, fresh) as sentiment ids (negative, positive).
ROTTEN_TOMATOES_SENTIMENT = (0, 2)
MaxLength = Annotated[int, Range(2, 512)]


def _generator(benchmark: str, seed: int, task: str, split: str) -> torch.Generator:
    """A generator that depends only on the benchmark, ``seed``, the task and the split."""
    digest = hashlib.sha256(f"{benchmark}:{task}:{split}:{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def _tokens(source: str, split: str, max_length: int, vocab_file: str | None,
            data_root: str | None):
    from lifelong.data.text import load_tokenized  # imported here: only needed to build

    return load_tokenized(source, split, vocab_file=vocab_file, max_length=max_length,
                          root=data_root)


def _check_caps(train_per_task: int | None, test_per_task: int | None, least: int) -> None:
    for field, n in (("train_per_task", train_per_task), ("test_per_task", test_per_task)):
        if n is not None and n < least:
            raise ValueError(f"{field}={n} must be at least {least} (one example per class)")


@BENCHMARKS.register("20news")
def newsgroups_20(
    train_per_task: Annotated[int, Range(2)] | None = None,
    test_per_task: Annotated[int, Range(2)] | None = None,
    scenario: Literal["task", "class"] = "task",
    seed: int = 0,
    class_seed: int | None = None,
    max_length: MaxLength = 128,
    vocab_file: str | None = None,
    data_root: str | None = None,
) -> Stream:
    """20 Newsgroups as 10 tasks of 2 newsgroups, CTR's pairs (task-incremental by default)."""
    if scenario not in ("task", "class"):
        raise ValueError(f"scenario={scenario!r} does not apply to 20news (its tasks' classes "
                         "differ); use task or class")
    _check_caps(train_per_task, test_per_task, 2)
    train = _tokens("20news", "train", max_length, vocab_file, data_root)
    test = _tokens("20news", "test", max_length, vocab_file, data_root)
    names = train.class_names
    if class_seed is None:
        order = [names.index(name) for name in CTR_CLASS_ORDER]
    else:
        shuffle = torch.Generator().manual_seed(class_seed)
        order = torch.randperm(len(names), generator=shuffle).tolist()
    x_train, y_train = torch.from_numpy(train.ids), torch.from_numpy(train.labels)
    x_test, y_test = torch.from_numpy(test.ids), torch.from_numpy(test.labels)
    parts, pairs = [], []
    for start in range(0, len(order), 2):
        pair = order[start:start + 2]
        name = "+".join(names[c] for c in pair)
        picked = []
        for split, y, n in (("train", y_train, train_per_task), ("test", y_test, test_per_task)):
            members = torch.isin(y, torch.tensor(pair)).nonzero().squeeze(1)
            generator = _generator("20news", seed, name, split)
            picked.append(members[stratified_subsample(y[members], n, generator)])
        parts.append((name, x_train[picked[0]], y_train[picked[0]], x_test[picked[1]],
                      y_test[picked[1]]))
        pairs.append([names[c] for c in pair])
    params = dict(train_per_task=train_per_task, test_per_task=test_per_task, scenario=scenario,
                  seed=seed, class_seed=class_seed, max_length=max_length,
                  vocab_file=vocab_file, vocab_sha256=train.vocab_sha256, class_names=list(names),
                  tasks=pairs)
    return build_stream("20news", scenario, parts, (max_length,), params)


@BENCHMARKS.register("tweet-domains")
def tweet_domains(
    domains: tuple[TweetDomain, ...] = TWEET_DOMAINS,
    include_rotten_tomatoes: bool = False,
    scenario: Literal["task", "domain"] = "task",
    test_fraction: Annotated[float, Range(0, 1, low_open=True, high_open=True)] = 0.2,
    train_per_task: Annotated[int, Range(3)] | None = None,
    test_per_task: Annotated[int, Range(3)] | None = None,
    seed: int = 0,
    split_seed: int = 0,
    max_length: MaxLength = 128,
    vocab_file: str | None = None,
    data_root: str | None = None,
) -> Stream:
    """Tweet sentiment (3 classes) across 6 domains, one task each; optional Rotten Tomatoes task."""
    from lifelong.data.digits import stratified_split

    if isinstance(domains, str):  # "cars,apple", as on the command line
        domains = tuple(name.strip() for name in domains.split(",") if name.strip())
    domains = tuple(domains)
    _check_domains(domains, scenario, test_fraction)
    _check_caps(train_per_task, test_per_task, 3)
    corpus = _tokens("tweets", "all", max_length, vocab_file, data_root)
    sources = []
    for domain in domains:
        rows = np.flatnonzero(corpus.domains == corpus.domain_names.index(domain))
        sources.append((domain, corpus.ids[rows], corpus.labels[rows]))
    if include_rotten_tomatoes:
        reviews = _tokens("rotten-tomatoes", "all", max_length, vocab_file, data_root)
        sentiment = np.asarray(ROTTEN_TOMATOES_SENTIMENT, dtype=np.int64)[reviews.labels]
        sources.append((ROTTEN_TOMATOES_TASK, reviews.ids, sentiment))
    parts, sizes = [], {}
    for name, ids, labels in sources:
        train_rows, test_rows = stratified_split(labels, test_fraction, split_seed)
        picked = []
        for split, rows, n in (("train", train_rows, train_per_task),
                               ("test", test_rows, test_per_task)):
            y = torch.from_numpy(labels[rows])
            take = stratified_subsample(y, n, _generator("tweet-domains", seed, name, split))
            picked.append(torch.from_numpy(rows)[take])
        x, y = torch.from_numpy(ids), torch.from_numpy(labels)
        parts.append((name, x[picked[0]], y[picked[0]], x[picked[1]], y[picked[1]]))
        sizes[name] = {"train": len(train_rows), "test": len(test_rows)}
    params = dict(domains=list(domains), include_rotten_tomatoes=include_rotten_tomatoes,
                  scenario=scenario, test_fraction=test_fraction, train_per_task=train_per_task,
                  test_per_task=test_per_task, seed=seed, split_seed=split_seed,
                  max_length=max_length, vocab_file=vocab_file,
                  vocab_sha256=corpus.vocab_sha256, class_names=list(corpus.class_names),
                  split_sizes=sizes)
    return build_stream("tweet-domains", scenario, parts, (max_length,), params)


def _check_domains(domains: tuple, scenario: str, test_fraction: float) -> None:
    """The checks ``make_stream`` does through the annotations, for direct calls too."""
    if not domains:
        raise ValueError(f"domains is empty; give one or more of: {', '.join(TWEET_DOMAINS)}")
    for name in domains:
        if name not in TWEET_DOMAINS:
            raise ValueError(f"domains has {name!r}; allowed values: {', '.join(TWEET_DOMAINS)}")
    repeated = sorted({name for name in domains if domains.count(name) > 1})
    if repeated:
        raise ValueError(f"domains lists {repeated[0]!r} twice; each domain is one task")
    if scenario not in ("task", "domain"):
        raise ValueError(f"scenario={scenario!r} does not apply to tweet-domains; use task or "
                         "domain (class-incremental would ask which domain a tweet is from)")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction={test_fraction} must be strictly between 0 and 1")
