"""Opening a dataset with Hugging Face `datasets`: local parquet, arrow, json/jsonl and csv files, folders, hub names.

`datasets` is imported inside the functions that need it (it takes seconds), so `import qerl` stays fast.
"""
from __future__ import annotations

import glob
import os
from typing import Any

from qerl.data.base import DatasetError

#: how a file name ends -> the `datasets` builder that reads it (and its extra arguments)
BUILDERS: dict[str, tuple[str, dict]] = {
    ".parquet": ("parquet", {}), ".arrow": ("arrow", {}),
    ".jsonl": ("json", {}), ".json": ("json", {}), ".jsonl.gz": ("json", {}), ".json.gz": ("json", {}),
    ".csv": ("csv", {}), ".csv.gz": ("csv", {}), ".tsv": ("csv", {"delimiter": "\t"}),
}
_SAVED_MARKERS = ("state.json", "dataset_dict.json")  # what `Dataset.save_to_disk` leaves in a folder


def builder_for(path: str) -> tuple[str, dict] | None:
    """The builder reading a file (or glob pattern) by its ending, or None for an ending `datasets` has no reader for."""
    lower = path.lower()
    for ending in sorted(BUILDERS, key=len, reverse=True):
        if lower.endswith(ending):
            return BUILDERS[ending]
    return None


def looks_like_a_path(path: str) -> bool:
    """A name that can only mean a local file: it has a data file ending or starts like a path (`/`, `.`, `~`)."""
    return builder_for(path) is not None or path.startswith(("/", ".", "~")) or "\\" in path


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def open_dataset(path: str, name: str | None = None, cache_dir: str | None = None) -> dict[str, Any]:
    """Every split of a dataset as `{split name: datasets.Dataset}`.

    `path` is a file (the ending picks the reader), a glob pattern, a folder (written by `save_to_disk`, or of data
    files whose names say the split, e.g. `train.parquet` and `test.parquet`), or a hub name (`org/dataset`, with
    the config `name`). A single file is the split "train". Raises `DatasetError` naming the path.
    """
    path = os.path.expanduser(os.fspath(path))
    import datasets

    try:
        if os.path.isdir(path):
            if any(os.path.isfile(os.path.join(path, marker)) for marker in _SAVED_MARKERS):
                loaded = datasets.load_from_disk(path)
            else:
                loaded = datasets.load_dataset(path, name, cache_dir=cache_dir)
        elif os.path.isfile(path) or glob.has_magic(path):
            reader = builder_for(path)
            if reader is None:
                raise DatasetError(f"{path}: cannot tell the format from the file name; name a file ending in "
                                   f"{', '.join(BUILDERS)}, or a folder.")
            if glob.has_magic(path) and not glob.glob(path):
                raise DatasetError(f"Dataset files not found: no file matches {path}. Check the path argument.")
            builder, extra = reader
            loaded = datasets.load_dataset(builder, data_files={"train": path}, cache_dir=cache_dir, **extra)
        elif looks_like_a_path(path):
            raise DatasetError(f"Dataset file not found: {path}. Check the path argument of the data module.")
        else:
            loaded = datasets.load_dataset(path, name, cache_dir=cache_dir)
    except DatasetError:
        raise
    except (ConnectionError, datasets.exceptions.DatasetNotFoundError) as exc:
        raise DatasetError(f"{path}: no local file or folder by that name, and the Hugging Face Hub did not give it "
                           f"({_first_line(exc)}). Check the name and the network, or give a local file.") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file or unreadable folder: name it, no traceback
        raise DatasetError(f"{path}: datasets could not read it ({_first_line(exc)}).") from None
    if isinstance(loaded, datasets.Dataset):
        return {"train": loaded}
    return dict(loaded)


def select_split(splits: dict[str, Any], spec: str, where: str) -> Any:
    """The rows `spec` names: a split ("train") or a slice of one in `datasets` notation ("train[:90%]")."""
    import datasets

    base = spec.split("[", 1)[0].strip()
    if base not in splits:
        raise DatasetError(f"{where}: no split {base!r}; it has {', '.join(sorted(splits))}. "
                           "Set train_split/test_split to one of them.")
    if "[" not in spec:
        return splits[base]
    try:
        parts = datasets.ReadInstruction.from_spec(spec).to_absolute({base: len(splits[base])})
    except (ValueError, AssertionError) as exc:
        raise DatasetError(f"{where}: bad split {spec!r} ({_first_line(exc)}); write e.g. 'train[:90%]' "
                           "or 'train[100:200]'.") from None
    if any(p.splitname != base for p in parts):
        raise DatasetError(f"{where}: split {spec!r} mixes splits; name one split per argument.")
    return splits[base].select([i for p in parts for i in range(p.from_, p.to)])
