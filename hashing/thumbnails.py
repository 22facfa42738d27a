"""The stored image of a dataset sample by key, as PNG: what the query service's ``/thumbnail`` serves.

    store = ThumbnailStore("s3://bucket/datasets/builtin-default")   # or a local folder
    png = store.png("database-000042")                               # bytes of a PNG file

The first lookup reads ``dataset.json`` and scans the tar headers of every shard of ``splits`` (default:
all the dataset's splits) once, building ``key -> (shard URI, member offset, member size)``; later
lookups read only that member's bytes (a ranged read on S3). Images stored as JPEG or WebP are
converted to PNG; PNGs are returned as stored. Keys and member names are never used as paths.
"""

from __future__ import annotations

import io
import tarfile
import threading
from dataclasses import dataclass

from hashing import storage
from hashing.data.schema import IMAGE_EXTENSIONS, KEY_PATTERN, load_manifest
from hashing.errors import InputError, NotFoundError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnknownKeyError(NotFoundError):
    """A key that no shard of the indexed splits holds an image for."""


@dataclass(frozen=True)
class StoredImage:
    """Where one sample's image member lies: the shard's URI, the member's data ``offset`` and ``size``
    (bytes from the start of the tar file) and its extension (``png`` / ``jpg`` / ``webp``)."""

    shard_uri: str
    offset: int
    size: int
    extension: str


def index_shard(shard_uri: str) -> dict[str, StoredImage]:
    """``key -> StoredImage`` of every image member of one tar shard (members ``{key}.{ext}``, ext an
    image extension, key matching ``KEY_PATTERN``; other members are skipped). The tar is read as a
    stream, once."""
    found: dict[str, StoredImage] = {}
    with storage.open_input(shard_uri) as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
        for member in tar:
            key, _, extension = member.name.partition(".")
            extension = extension.lower()
            if member.isfile() and extension in IMAGE_EXTENSIONS and KEY_PATTERN.fullmatch(key):
                found.setdefault(key, StoredImage(shard_uri, member.offset_data, member.size, extension))
    return found


def to_png(data: bytes, what: str) -> bytes:
    """``data`` (an image file's bytes) as a PNG file's bytes: unchanged when already PNG."""
    if data.startswith(PNG_SIGNATURE):
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            out = io.BytesIO()
            image.convert("RGB").save(out, format="PNG")
    except (UnidentifiedImageError, OSError) as exc:
        raise InputError(f"{what} is not a readable image ({exc})") from exc
    return out.getvalue()


class ThumbnailStore:
    """The images of the dataset at ``dataset_uri`` by key (see the module docstring). Thread-safe: the
    index is built once, by the first caller, while the others wait."""

    def __init__(self, dataset_uri: str, splits: tuple[str, ...] | None = None) -> None:
        self.dataset_uri = dataset_uri
        self.splits = splits
        self._index: dict[str, StoredImage] | None = None
        self._lock = threading.Lock()

    def index(self) -> dict[str, StoredImage]:
        """``key -> StoredImage`` over the splits' shards (built on the first call, then cached); a key in
        several shards maps to its first one in manifest order."""
        with self._lock:
            if self._index is None:
                manifest = load_manifest(self.dataset_uri)
                index: dict[str, StoredImage] = {}
                for split in self.splits or tuple(manifest.splits):
                    for uri in manifest.shard_uris(self.dataset_uri, split):
                        for key, image in index_shard(uri).items():
                            index.setdefault(key, image)
                self._index = index
            return self._index

    def png(self, key: str) -> bytes:
        """The stored image of ``key`` as PNG bytes. Raises ``UnknownKeyError`` naming the key."""
        image = self.index().get(key)
        if image is None:
            raise UnknownKeyError(f"no image for key {key!r} in the dataset at {self.dataset_uri}")
        fs, path = storage.filesystem(image.shard_uri)
        with fs.open_input_file(path) as f:
            data = f.read_at(image.size, image.offset)
        if len(data) != image.size:
            raise InputError(f"{image.shard_uri}: the image of {key!r} was cut short ({len(data)} of "
                             f"{image.size} bytes); the shard changed after the index was built")
        return to_png(data, f"the image of {key!r} in {image.shard_uri}")
