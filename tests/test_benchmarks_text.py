"""The text benchmarks on hand-made token ids (their layouts), and on the real corpora when available."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lifelong.benchmarks.text as text_benchmarks
from lifelong.benchmarks import make_stream
from lifelong.benchmarks.text import CTR_CLASS_ORDER
from lifelong.data import DatasetUnavailableError, data_dir
from lifelong.data.text import NEWSGROUPS, SENTIMENTS, TWEET_DOMAINS, TokenizedText

MAX_LENGTH = 6


def fake_tokens(source: str, split: str, labels, domains=None) -> TokenizedText:
    """Token ids that spell out the example: [CLS], 10 + label, 40 + domain, its index, [SEP]."""
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    ids = np.zeros((n, MAX_LENGTH), dtype=np.int64)
    ids[:, 0], ids[:, 1], ids[:, 3], ids[:, 4] = 101, 10 + labels, 1000 + np.arange(n), 102
    class_names = {"20news": NEWSGROUPS, "tweets": SENTIMENTS,
                   "rotten-tomatoes": ("rotten", "fresh")}[source]
    domain_names = ()
    if domains is not None:
        domains = np.asarray(domains, dtype=np.int64)
        ids[:, 2] = 40 + domains
        domain_names = TWEET_DOMAINS
    return TokenizedText(source, split, ids, labels, class_names, domains, domain_names, "ab" * 32)


# Per (domain, sentiment): 10 tweets, except claritin's negatives (5).
TWEET_COUNTS = {(d, s): 5 if (d, s) == (5, 0) else 10 for d in range(6) for s in range(3)}


@pytest.fixture
def fake_corpora(monkeypatch):
    """20news: 6 train / 3 test documents per newsgroup; tweets: TWEET_COUNTS; 10 reviews."""
    labels = [s for (d, s), n in TWEET_COUNTS.items() for _ in range(n)]
    domains = [d for (d, s), n in TWEET_COUNTS.items() for _ in range(n)]
    corpora = {
        ("20news", "train"): fake_tokens("20news", "train", np.repeat(np.arange(20), 6)),
        ("20news", "test"): fake_tokens("20news", "test", np.tile(np.arange(20), 3)),
        ("tweets", "all"): fake_tokens("tweets", "all", labels, domains),
        ("rotten-tomatoes", "all"): fake_tokens("rotten-tomatoes", "all", [0] * 4 + [1] * 6),
    }
    calls = []

    def tokens(source, split, max_length, vocab_file, data_root):
        calls.append((source, split, max_length, vocab_file, data_root))
        return corpora[source, split]

    monkeypatch.setattr(text_benchmarks, "_tokens", tokens)
    return calls


def test_20news_is_ctrs_ten_pairs_task_incremental(fake_corpora):
    stream = make_stream("20news", max_length=MAX_LENGTH)
    assert fake_corpora == [("20news", "train", MAX_LENGTH, None, None),
                            ("20news", "test", MAX_LENGTH, None, None)]
    assert stream.scenario == "task" and stream.n_tasks == 10 and stream.n_units == 20
    assert stream.input_shape == (MAX_LENGTH,)
    pairs = [CTR_CLASS_ORDER[i:i + 2] for i in range(0, 20, 2)]
    assert [task.name for task in stream] == ["+".join(pair) for pair in pairs]
    assert stream.params["tasks"][0] == ["comp.graphics", "comp.os.ms-windows.misc"]
    for task, pair in zip(stream, pairs, strict=True):
        ids = tuple(sorted(NEWSGROUPS.index(name) for name in pair))
        assert task.classes == ids and stream.layout.task_units[task.id] == ids  # 2 units each
        assert task.x_train.dtype == torch.int64 and task.x_train.shape == (12, MAX_LENGTH)
        assert len(task.y_test) == 6
        # Units are the newsgroups' ids, and each example keeps its own label.
        assert torch.equal(task.x_train[:, 1] - 10, task.y_train)
        assert torch.equal(task.x_test[:, 1] - 10, task.y_test)
        mask = task.train_mask
        assert mask.sum() == 2 and mask[list(ids)].all()
    assert sorted(u for units in stream.layout.task_units for u in units) == list(range(20))


def test_20news_class_seed_caps_and_class_scenario(fake_corpora):
    stream = make_stream("20news", class_seed=3, train_per_task=3, test_per_task=2, seed=1,
                         scenario="class")
    order = torch.randperm(20, generator=torch.Generator().manual_seed(3)).tolist()
    assert [task.classes for task in stream] == [tuple(sorted(order[i:i + 2]))
                                                 for i in range(0, 20, 2)]
    assert stream.scenario == "class" and stream.layout.eval_mask(None) is None
    for task in stream:
        assert len(task.y_train) == 3 and len(task.y_test) == 2
        assert set(task.y_test.tolist()) == set(task.classes)  # stratified: both classes
    again = make_stream("20news", class_seed=3, train_per_task=3, test_per_task=2, seed=1,
                        scenario="class")
    other = make_stream("20news", class_seed=3, train_per_task=3, test_per_task=2, seed=2,
                        scenario="class")
    assert all(torch.equal(a.x_train, b.x_train) for a, b in zip(stream, again, strict=True))
    assert any(not torch.equal(a.x_train, b.x_train) for a, b in zip(stream, other, strict=True))


def test_20news_rejects_bad_parameters(fake_corpora):
    with pytest.raises(ValueError, match="scenario='domain' does not apply to 20news"):
        text_benchmarks.newsgroups_20(scenario="domain")
    with pytest.raises(ValueError, match="train_per_task=1 must be at least 2"):
        text_benchmarks.newsgroups_20(train_per_task=1)
    with pytest.raises(ValueError, match="max_length"):
        make_stream("20news", max_length=1)


def test_tweet_domains_task_scenario_with_held_out_tests(fake_corpora):
    stream = make_stream("tweet-domains", max_length=MAX_LENGTH)
    assert [task.name for task in stream] == list(TWEET_DOMAINS)
    assert stream.scenario == "task" and stream.n_units == 18
    assert stream.layout.task_units == tuple(tuple(range(3 * t, 3 * t + 3)) for t in range(6))
    assert stream.input_shape == (MAX_LENGTH,)
    for task in stream:
        for x, y in ((task.x_train, task.y_train), (task.x_test, task.y_test)):
            assert (x[:, 2] - 40 == task.id).all()  # the task's own domain only
            assert torch.equal(3 * task.id + x[:, 1] - 10, y)  # its own block of 3 units
        train, test = set(task.x_train[:, 3].tolist()), set(task.x_test[:, 3].tolist())
        assert not train & test
        # 20% of each sentiment, rounded half up: 2 of 10, 1 of 5.
        held_out = [2, 2, 2] if task.name != "claritin" else [1, 2, 2]
        assert torch.bincount(task.y_test - 3 * task.id, minlength=3).tolist() == held_out
        assert len(train) + len(test) == sum(TWEET_COUNTS[task.id, s] for s in range(3))
    assert stream.params["split_sizes"]["claritin"] == {"train": 20, "test": 5}
    # The held-out split does not move with the run's seed, only with split_seed.
    tests = [task.x_test[:, 3].sort().values for task in stream]
    reseeded = make_stream("tweet-domains", seed=5)
    assert all(torch.equal(a, t.x_test[:, 3].sort().values) for a, t in zip(tests, reseeded,
                                                                           strict=True))
    resplit = make_stream("tweet-domains", split_seed=5)
    assert any(not torch.equal(a, t.x_test[:, 3].sort().values)
               for a, t in zip(tests, resplit, strict=True))


def test_tweet_domains_domain_scenario_shares_one_head_with_rotten_tomatoes(fake_corpora):
    stream = make_stream("tweet-domains", scenario="domain", include_rotten_tomatoes=True,
                         domains="apple,cars", train_per_task=3)
    assert [task.name for task in stream] == ["apple", "cars", "rotten-tomatoes"]
    assert stream.n_units == 3 and stream.layout.task_units == ((0, 1, 2),) * 3
    assert stream.layout.train_mask(2) is None  # one shared head, all units
    apple, cars, reviews = stream.tasks
    assert (apple.x_train[:, 2] == 40 + TWEET_DOMAINS.index("apple")).all()
    assert len(apple.y_train) == 3 and sorted(apple.y_train.tolist()) == [0, 1, 2]
    # rotten (0) -> negative (unit 0), fresh (1) -> positive (unit 2); 20% held out.
    assert reviews.classes == (0, 2)
    assert torch.equal(torch.where(reviews.x_test[:, 1] == 10, 0, 2), reviews.y_test)
    assert len(reviews.y_test) == 2 and len(reviews.y_train) == 3


def test_tweet_domains_task_scenario_gives_rotten_tomatoes_two_units(fake_corpora):
    stream = make_stream("tweet-domains", include_rotten_tomatoes=True, domains="claritin")
    assert stream.layout.task_units == ((0, 1, 2), (3, 4))
    reviews = stream[1]
    assert torch.equal(torch.where(reviews.x_train[:, 1] == 10, 3, 4), reviews.y_train)


def test_tweet_domains_rejects_bad_parameters(fake_corpora):
    with pytest.raises(ValueError, match="scenario='class' does not apply to tweet-domains"):
        text_benchmarks.tweet_domains(scenario="class")
    with pytest.raises(ValueError, match="domains has 'nfl'"):
        text_benchmarks.tweet_domains(domains=("nfl",))
    with pytest.raises(ValueError, match="lists 'cars' twice"):
        text_benchmarks.tweet_domains(domains=("cars", "cars"))
    with pytest.raises(ValueError, match="test_fraction=1.0 must be strictly between"):
        text_benchmarks.tweet_domains(test_fraction=1.0)
    with pytest.raises(ValueError, match="test_per_task=2 must be at least 3"):
        text_benchmarks.tweet_domains(test_per_task=2)
    with pytest.raises(Exception, match="test_fraction"):
        make_stream("tweet-domains", test_fraction=0)


def test_token_ids_train_through_the_engine(fake_corpora):
    """Integer inputs go through the engine untouched: a bag of embeddings learns the tasks."""
    from lifelong.engine import run
    from lifelong.methods import make_method
    from lifelong.models.network import Network

    stream = make_stream("tweet-domains", domains="cars,apple")
    body = nn.Sequential(nn.EmbeddingBag(1200, 8, mode="mean", padding_idx=0))
    model = Network(body, nn.Linear(8, stream.n_units), seed=0)
    result = run(make_method("finetune", model, lr=0.5), stream, epochs=10, batch_size=8)
    accuracy = np.asarray(result.accuracy_matrix)
    assert accuracy.shape == (2, 2) and accuracy[1, 1] == 1.0


# ---------------------------------------------------------------------------------------------
# The real corpora


@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("text-root")
    shared = data_dir() / "downloads"
    shared.mkdir(parents=True, exist_ok=True)
    (root / "downloads").symlink_to(shared, target_is_directory=True)
    return root


def _real(name, **params):
    try:
        return make_stream(name, **params)
    except DatasetUnavailableError as error:
        pytest.skip(str(error))


def test_real_20news(real_root):
    stream = _real("20news", data_root=str(real_root))
    assert stream.n_tasks == 10 and stream.input_shape == (128,)
    assert sum(len(t.y_train) for t in stream) == 11_293
    assert sum(len(t.y_test) for t in stream) == 7_528
    first = stream[0]
    assert first.name == "comp.graphics+comp.os.ms-windows.misc"
    assert (len(first.y_train), len(first.y_test)) == (584 + 572, 389 + 394)
    assert (first.x_train[:, 0] == 101).all()  # [CLS] of the MiniLM vocabulary


def test_real_tweet_domains(real_root):
    stream = _real("tweet-domains", include_rotten_tomatoes=True, data_root=str(real_root))
    sizes = {t.name: len(t.y_train) + len(t.y_test) for t in stream}
    assert sizes == {"cars": 4814, "airline": 14640, "coachella": 3764, "deflategate": 9440,
                     "apple": 3804, "claritin": 1696, "rotten-tomatoes": 12808}
    claritin = stream[5]
    assert torch.bincount(claritin.y_test - 15).tolist() == [17, 284, 38]  # 87/1419/190 * 0.2
