"""Deterministic payloads generated block by block, so large bodies are streamed and checked, never held."""

from __future__ import annotations

import hashlib
import random
from collections.abc import AsyncIterator, Iterator

BLOCK = 256 * 1024
MB = 1024 * 1024


def _base(seed: int) -> bytes:
    return random.Random(seed).randbytes(BLOCK)


def blocks(total: int, seed: int = 1, block: int = BLOCK) -> Iterator[bytes]:
    """`total` bytes in pieces of at most `block`; every block starts with its index, so order matters."""
    base = _base(seed)
    index = 0
    sent = 0
    while sent < total:
        size = min(block, total - sent)
        piece = index.to_bytes(8, "big") + base[8:]
        yield piece[:size]
        sent += size
        index += 1


async def ablocks(total: int, seed: int = 1, block: int = BLOCK) -> AsyncIterator[bytes]:
    for piece in blocks(total, seed, block):
        yield piece


def sha256_of(total: int, seed: int = 1) -> str:
    digest = hashlib.sha256()
    for piece in blocks(total, seed):
        digest.update(piece)
    return digest.hexdigest()


def payload(total: int, seed: int = 1) -> bytes:
    """A small payload held in memory (for bodies of a few MB at most)."""
    return b"".join(blocks(total, seed))
