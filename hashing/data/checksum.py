"""A file wrapper that checksums what passes through it: shard tars are written and read through one."""

from __future__ import annotations

import hashlib
from typing import BinaryIO


class ChecksumStream:
    """Wraps ``f``; ``sha`` (sha256) and ``size`` (bytes) cover everything read from or written to it."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.sha = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n)
        self._count(data)
        return data

    def write(self, data: bytes) -> int:
        self._count(data)
        return self.f.write(data)

    def drain(self) -> None:
        """Read to the end of ``f`` (so the checksum covers all of it)."""
        while self.read(1 << 20):
            pass

    def _count(self, data: bytes) -> None:
        self.sha.update(data)
        self.size += len(data)
