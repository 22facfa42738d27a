"""The split names of every dataset, apart from ``schema`` so the CLI's ``--help`` can read them without
importing pyarrow."""

from typing import Literal, get_args

# A split name as a type (config fields); SPLITS are its values in dataset order.
Split = Literal["train", "query", "database"]
SPLITS: tuple[str, ...] = get_args(Split)
# The splits retrieval runs on: the searched one first (search's default), then the one queries come from.
RETRIEVAL_SPLITS = ("database", "query")
