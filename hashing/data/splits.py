"""The split names of every dataset, apart from ``schema`` so the CLI's ``--help`` can read them without
importing pyarrow."""

SPLITS = ("train", "query", "database")
# The splits retrieval runs on: the searched one first (search's default), then the one queries come from.
RETRIEVAL_SPLITS = ("database", "query")
