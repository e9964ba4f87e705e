"""Where records come from: a hub dataset (with split), a local ``.jsonl`` / ``.json`` (array or JSON Lines) /
``.parquet`` / ``.csv`` file, or a ``save_to_disk`` directory, read into :class:`Records` that know each row's
file and line for messages. A line that is not valid JSON or UTF-8 stays in place as :class:`Unparsable`, so the
bad-record policy (``align.data.encoding.encode_records``) counts or names it like any other bad record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from align.errors import BadRecord  # noqa: F401  (raised here; its home is align.errors)
from align.models.source import looks_local

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
SUPPORTED_FORMS = (
    "a .jsonl file, a .json file (an array of records or JSON Lines), a .parquet or .csv file, a "
    "directory written by datasets' save_to_disk, or a hub dataset id"
)


class OverLongPrompt(BadRecord):
    """Governed by ``over_long_prompt`` rather than ``on_bad_record``."""


def is_local(dataset: str) -> bool:
    """Local data (a file or a ``save_to_disk`` directory), as opposed to a hub dataset id."""
    return Path(dataset).suffix in LOCAL_SUFFIXES or Path(dataset).is_file() or _saved_dataset(Path(dataset))


def _saved_dataset(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return path.is_dir() and (
        (path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists() or (path / "state.json").exists()
    )


class Records(list):
    """Rows of a data source, with where each one is, for messages: ``path:LINE`` (1-based) for JSON Lines,
    ``path: record I`` (0-based index into the array or table) for a JSON array or parquet, ``source: record I``
    for the hub. A line that is not valid JSON stays in its place as an :class:`Unparsable`, so the bad-record
    policy counts or names it in file order like any other bad record."""

    def __init__(self, rows, locations):
        super().__init__(rows)
        self.locations = locations

    def where(self, i: int) -> str:
        return self.locations[i]


@dataclass
class Unparsable:
    error: str
    reason: str = "not valid JSON"  # the skip-count key


def _json_lines(data: bytes, name: str) -> Records:
    """One record per line; a line that is not UTF-8 or not JSON stays in place as an :class:`Unparsable`."""
    rows, where = [], []
    for n, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            rows.append(Unparsable(f"byte {e.start} of the line is {raw[e.start : e.start + 1]!r}", "not valid UTF-8"))
            where.append(f"{name}:{n}")
            continue
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            rows.append(Unparsable(str(e)))
        where.append(f"{name}:{n}")
    return Records(rows, where)


def _utf8(path: Path) -> str:
    """A whole data file as text; bytes that are not UTF-8 are a :class:`BadRecord` naming ``path:line``."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise BadRecord(
            f"{path}:{line}: not valid UTF-8 (byte {data[e.start : e.start + 1]!r}); re-encode the file as UTF-8"
        ) from None


def load_records(dataset: str, split: str | None, config_name: str | None = None) -> tuple[Records, str]:
    """Rows as dicts (see :class:`Records`), and a name for messages. Local jsonl/json are parsed line by line."""
    path = Path(dataset)
    if _saved_dataset(path):
        import datasets

        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                if split is not None or len(ds) != 1:
                    raise BadRecord(
                        f"{dataset}: a saved DatasetDict with splits {', '.join(ds)}; name one with "
                        f"data.train_split (or data.eval_split for held-out data)"
                    )
                split = next(iter(ds))
            ds, name = ds[split], f"{dataset}[{split}]"
        else:
            name = str(path)
        return Records(list(ds), [f"{name}: record {i} (0-based)" for i in range(len(ds))]), name
    if path.suffix in LOCAL_SUFFIXES or path.is_file():
        if not path.exists():
            raise FileNotFoundError(f"data file {dataset} does not exist")
        rows, name = _local_records(path, dataset)
        if not rows:
            raise BadRecord(f"{dataset} holds no records" + (" (a header only)" if path.suffix == ".csv" else ""))
        return rows, name
    if path.is_dir():
        raise BadRecord(
            f"{dataset} is a directory but not one written by datasets' save_to_disk; give {SUPPORTED_FORMS}"
        )

    if looks_local(dataset):
        raise FileNotFoundError(f"data {dataset}: no such file or directory (give {SUPPORTED_FORMS})")
    import datasets

    ds = datasets.load_dataset(dataset, config_name, split=split)
    name = f"{dataset}[{split}]"
    return Records(list(ds), [f"{name}: record {i}" for i in range(len(ds))]), name


def _local_records(path: Path, dataset: str) -> tuple[Records, str]:
    """The rows of a local .jsonl / .json / .parquet / .csv file (see :func:`load_records`)."""
    if path.suffix == ".jsonl":
        return _json_lines(path.read_bytes(), dataset), str(path)
    if path.suffix == ".json":
        raw = path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if raw.lstrip()[:1] == b"{":  # JSON Lines: a line that is not UTF-8 is a bad record, the rest is read
                return _json_lines(raw, dataset), str(path)
            text = _utf8(path)  # an array cannot be read in part: the error names path:line
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg == "Extra data":  # JSON Lines in a .json file (what datasets' to_json writes)
                return _json_lines(raw, dataset), str(path)
            raise BadRecord(f"{dataset}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise BadRecord(f"{dataset}: expected a JSON list of records (or one record per line)")
        return Records(data, [f"{dataset}: record {i} (0-based index in the array)" for i in range(len(data))]), str(
            path
        )
    if path.suffix not in (".parquet", ".csv"):
        raise BadRecord(f"{dataset}: cannot read a {path.suffix or 'suffix-less'} file as data; give {SUPPORTED_FORMS}")
    import datasets

    if path.suffix == ".csv":
        text = _utf8(path)  # read as one table: bytes that are not UTF-8 are named by path:line
        if len([line for line in text.splitlines() if line.strip()]) < 2:  # empty, or a header only
            return Records([], []), str(path)
    try:
        rows = list(datasets.load_dataset(path.suffix[1:], data_files=str(path), split="train"))
    except Exception as e:  # pyarrow / datasets errors on a damaged table: one line naming the file
        cause = e
        while cause.__cause__ is not None:  # datasets wraps the reader's own error
            cause = cause.__cause__
        detail = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        raise BadRecord(
            f"{dataset}: cannot be read as {path.suffix[1:]} ({type(cause).__name__}: {detail[:200]})"
        ) from None
    if path.suffix == ".csv":  # a row per line unless a quoted field spans lines
        return Records(rows, [f"{dataset}: row {i} (0-based, after the header)" for i in range(len(rows))]), str(path)
    return Records(rows, [f"{dataset}: row {i} (0-based)" for i in range(len(rows))]), str(path)
