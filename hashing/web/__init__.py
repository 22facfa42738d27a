"""The query service's web page (``index.html``, served at ``GET /`` by ``hashing.serving_app``)."""

from importlib.resources import files


def index_html() -> str:
    """The page: plain HTML, CSS and JS in one file, nothing loaded from elsewhere."""
    return files(__name__).joinpath("index.html").read_text(encoding="utf-8")
