"""hashing.data.checksum: the sha256 and size of what was written through, or read through, the wrapper."""

from __future__ import annotations

import hashlib
import io

from hashing.data.checksum import ChecksumStream


def test_writes_and_reads_are_checksummed() -> None:
    data = bytes(range(256)) * 5000  # > the 1 MiB drain chunk
    out = io.BytesIO()
    written = ChecksumStream(out)
    assert written.write(data[:1000]) + written.write(data[1000:]) == len(data)
    assert out.getvalue() == data
    assert (written.size, written.sha.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())

    read = ChecksumStream(io.BytesIO(data))
    assert read.read(10) == data[:10]
    read.drain()
    assert (read.size, read.sha.hexdigest()) == (len(data), hashlib.sha256(data).hexdigest())
