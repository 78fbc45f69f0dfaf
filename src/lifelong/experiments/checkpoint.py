"""Checkpoints after every task: method state, the partial result and RNG states, checksummed.

A checkpoint file is ``MAGIC`` + the sha256 of the payload + the payload (``torch.save`` bytes),
written atomically. Loading verifies the checksum, so a truncated or corrupted file is detected
and reported, and the run falls back to the previous good checkpoint. The last ``KEEP`` are kept.
"""

from __future__ import annotations

import hashlib
import io
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lifelong.io import atomic_write_bytes

MAGIC = b"LIFELONG-CHECKPOINT-1\n"
KEEP = 2
log = logging.getLogger("lifelong.experiments")


class CorruptCheckpoint(Exception):
    """A checkpoint file that is truncated, corrupted or not a checkpoint at all."""


@dataclass
class Checkpoint:
    path: Path
    task: int  # the last task trained
    state: dict[str, Any]  # method, result, rng, config_key


def checkpoint_path(directory: Path, task: int) -> Path:
    return directory / f"task-{task:04d}.ckpt"


def save_checkpoint(directory: Path, task: int, state: dict[str, Any]) -> Path:
    """Write the checkpoint of ``task`` and delete all but the newest ``KEEP``."""
    buffer = io.BytesIO()
    torch.save({**state, "rng": rng_state()}, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    path = atomic_write_bytes(checkpoint_path(directory, task), MAGIC + digest + b"\n" + payload)
    for old in sorted(directory.glob("task-*.ckpt"))[:-KEEP]:
        old.unlink(missing_ok=True)
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The state saved in ``path``; raises `CorruptCheckpoint` if its checksum does not match."""
    data = path.read_bytes()
    header = len(MAGIC) + 65
    if not data.startswith(MAGIC) or len(data) < header:
        raise CorruptCheckpoint(f"{path}: not a checkpoint or truncated header")
    digest, payload = data[len(MAGIC):header - 1].decode(), data[header:]
    if hashlib.sha256(payload).hexdigest() != digest:
        raise CorruptCheckpoint(f"{path}: checksum mismatch (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), weights_only=False)


def latest_good_checkpoint(directory: Path) -> tuple[Checkpoint | None, list[str]]:
    """The newest checkpoint that verifies, and a message for each newer one that did not."""
    problems = []
    for path in sorted(directory.glob("task-*.ckpt"), reverse=True):
        try:
            state = read_checkpoint(path)
        except (CorruptCheckpoint, OSError, EOFError, RuntimeError) as error:
            problems.append(str(error))
            log.warning("skipping bad checkpoint: %s", error)
            continue
        return Checkpoint(path, int(path.stem.split("-")[1]), state), problems
    return None, problems


def rng_state() -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
            "python": random.getstate()}


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
