"""Public datasets -> the canonical log schema (DESIGN section 4, model_anchors section 5).

KuaiRand-1K: one row per impression, as in the released ``log_standard_*.csv`` files or
the merged per-impression layout with user and video features joined on (42 columns,
Scenario-Wise-Rec's ``kuairand_sample.csv``). domain = ``tab``; only the five largest
tabs {1, 0, 2, 4, 6} are kept, filtered on the RAW tab value, then re-indexed in sorted
order (tab 0 -> 0, 1 -> 1, 2 -> 2, 4 -> 3, 6 -> 4; the LabelEncoder order the published
per-domain counts use). Label ``is_click``. The play/stay-time columns are dropped as
leaky, and so are the other feedback signals (is_like, long_view, ...).

AliCCP: the joined CSV layout (click, purchase, 23 sparse fields, 8 dense ``D*`` fields).
domain = field ``301`` (1, 2, 3 -> 0, 1, 2); label ``click``, also ``purchase``; rows with
click=0 and purchase=1 are dropped (as in the published preprocessing). Field 101 is the
user id and 205 the item id; the other sparse fields become categorical features named
``f<field>`` (301 is the domain itself), the dense fields numeric features.

Files are streamed in chunks. Output: TFRecord (exact types) + feature_config.json, staged
in a temporary folder and renamed at the end, so nothing partial lands in --out.
"""
import dataclasses
import json
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from crocodile.errors import UserError
from crocodile.model import features
from crocodile.simulation import dataset, log_writers, staging

READ_CHUNK_ROWS = 200_000
SOURCE_FILE = "source.json"


@dataclasses.dataclass(frozen=True)
class DatasetLayout:
    name: str
    user_column: str
    item_column: str
    domain_column: str
    domain_map: Dict[int, int]          # raw value -> domain id
    label_columns: Dict[str, str]       # source column -> canonical label column
    numeric_columns: Tuple[str, ...]    # kept as float features (all other kept columns are categorical)
    required_columns: Tuple[str, ...]
    dropped_columns: Tuple[str, ...]    # leaky outcomes and bookkeeping, never features
    rename: Dict[str, str] = dataclasses.field(default_factory=dict)  # source -> feature name


KUAIRAND_TABS = (1, 0, 2, 4, 6)
KUAIRAND = DatasetLayout(
    name="kuairand",
    user_column="user_id",
    item_column="video_id",
    domain_column="tab",
    domain_map={tab: index for index, tab in enumerate(sorted(KUAIRAND_TABS))},
    label_columns={"is_click": features.LABEL_KEY},
    numeric_columns=("follow_user_num", "fans_user_num", "friend_user_num", "register_days"),
    required_columns=("user_id", "video_id", "tab", "is_click"),
    dropped_columns=(
        # leaky: measured after the impression (model_anchors section 5)
        "play_time_ms", "duration_ms", "profile_stay_time", "comment_stay_time",
        # other feedback signals of the same impression
        "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view", "is_profile_enter",
        # bookkeeping: the random-exposure flag and the time columns (time_ms becomes timestamp)
        "is_rand", "date", "hourmin", "time_ms",
    ),
)

ALICCP_SPARSE = ("101", "121", "122", "124", "125", "126", "127", "128", "129", "205", "206", "207", "210",
                 "216", "508", "509", "702", "853", "301", "109_14", "110_14", "127_14", "150_14")
ALICCP_DENSE = ("D109_14", "D110_14", "D127_14", "D150_14", "D508", "D509", "D702", "D853")
ALICCP = DatasetLayout(
    name="aliccp",
    user_column="101",
    item_column="205",
    domain_column="301",
    domain_map={1: 0, 2: 1, 3: 2},
    label_columns={"click": features.LABEL_KEY, "purchase": features.PURCHASE_KEY},
    numeric_columns=ALICCP_DENSE,
    required_columns=("click", "purchase") + ALICCP_SPARSE + ALICCP_DENSE,
    dropped_columns=(),
    rename={f: "f" + f for f in ALICCP_SPARSE},
)
LAYOUTS = {layout.name: layout for layout in (KUAIRAND, ALICCP)}


def _row_error(path: str, column: str, row: int, message: str) -> UserError:
    return UserError(f"{path}: column {column!r}, row {row} (line {row + 1}): {message}")


def _read_chunks(path: str) -> Iterator[Tuple[int, "object"]]:
    """(first data row number, 1-based; DataFrame of strings) chunks of one CSV file."""
    import pandas as pd

    if not os.path.isfile(path):
        raise UserError(f"{path}: not a readable file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (no header, no rows)")
    try:
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, chunksize=READ_CHUNK_ROWS)
        first_row = 1
        for chunk in reader:
            yield first_row, chunk
            first_row += len(chunk)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise UserError(f"{path}: cannot read as CSV: {str(error).splitlines()[0]}") from error


def _parse_int(path, column, first_row, values: np.ndarray) -> np.ndarray:
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numbers) | (numbers != np.round(numbers))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _row_error(path, column, first_row + i, f"expected an integer, got {values[i]!r}")
    return numbers.astype(np.int64)


def _parse_float(path, column, first_row, values: np.ndarray) -> np.ndarray:
    import pandas as pd

    numbers = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(numbers)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise _row_error(path, column, first_row + i, f"expected a number, got {values[i]!r}")
    return numbers


class _Converter:
    """Turns chunks of one layout into canonical column dicts, checking as it goes."""

    def __init__(self, layout: DatasetLayout):
        self.layout = layout
        self.columns: Optional[List[str]] = None  # source columns of the first file
        self.categorical: List[str] = []
        self.stats = {"rows_read": 0, "rows_written": 0, "rows_outside_domains": 0, "rows_click0_purchase1": 0}

    def start_file(self, path: str, header: Sequence[str]) -> None:
        layout = self.layout
        missing = [c for c in layout.required_columns if c not in header]
        if missing:
            raise UserError(f"{path}: missing column(s) {missing} in the header (line 1) for --format {layout.name}")
        if self.columns is None:
            self.columns = list(header)
            special = {layout.user_column, layout.item_column, layout.domain_column, *layout.label_columns,
                       *layout.dropped_columns, *layout.numeric_columns}
            self.categorical = [c for c in header if c not in special]
        elif sorted(header) != sorted(self.columns):
            raise UserError(f"{path}: columns differ from the first input file's ({sorted(set(header) ^ set(self.columns))})")

    def feature_name(self, column: str) -> str:
        return self.layout.rename.get(column, column)

    def convert(self, path: str, first_row: int, chunk) -> Dict[str, np.ndarray]:
        layout = self.layout
        self.stats["rows_read"] += len(chunk)
        labels = {}
        for source, target in layout.label_columns.items():
            values = chunk[source].to_numpy()
            ok = np.isin(values, ("0", "1"))
            if not ok.all():
                i = int(np.flatnonzero(~ok)[0])
                raise _row_error(path, source, first_row + i, f"label must be 0 or 1, got {values[i]!r}")
            labels[target] = (values == "1").astype(np.int64)
        raw_domain = _parse_int(path, layout.domain_column, first_row, chunk[layout.domain_column].to_numpy())
        keep = np.isin(raw_domain, list(layout.domain_map))  # on RAW values, before any re-indexing
        self.stats["rows_outside_domains"] += int((~keep).sum())
        if layout is ALICCP:
            if not keep.all():
                i = int(np.flatnonzero(~keep)[0])
                raise _row_error(path, layout.domain_column, first_row + i,
                                 f"domain field must be one of {sorted(layout.domain_map)}, got {raw_domain[i]}")
            bogus = (labels[features.LABEL_KEY] == 0) & (labels[features.PURCHASE_KEY] == 1)
            self.stats["rows_click0_purchase1"] += int(bogus.sum())
            keep &= ~bogus
        rows = np.flatnonzero(keep)
        for column in (layout.user_column, layout.item_column):
            empty = chunk[column].to_numpy()[rows] == ""
            if empty.any():
                raise _row_error(path, column, first_row + int(rows[np.flatnonzero(empty)[0]]), "empty id")
        raw_values = np.array(sorted(layout.domain_map))
        domain_ids = np.array([layout.domain_map[v] for v in raw_values], dtype=np.int64)
        out = {
            features.USER_KEY: chunk[layout.user_column].to_numpy()[rows],
            features.ITEM_KEY: chunk[layout.item_column].to_numpy()[rows],
            features.DOMAIN_KEY: domain_ids[np.searchsorted(raw_values, raw_domain[rows])],
        }
        out.update({k: v[rows] for k, v in labels.items()})
        if "time_ms" in chunk:
            millis = _parse_int(path, "time_ms", first_row, chunk["time_ms"].to_numpy())
            out[features.TIMESTAMP_KEY] = millis[rows] // 1000
        for column in self.categorical:
            out[self.feature_name(column)] = chunk[column].to_numpy()[rows]
        for column in layout.numeric_columns:
            if column in chunk:
                out[column] = _parse_float(path, column, first_row, chunk[column].to_numpy())[rows]
        self.stats["rows_written"] += len(rows)
        return out

    def dtypes(self) -> Dict[str, str]:
        """Exact tf.Example type of every output column."""
        types = {features.USER_KEY: "bytes", features.ITEM_KEY: "bytes", features.DOMAIN_KEY: "int64",
                 features.TIMESTAMP_KEY: "int64"}
        types.update({target: "int64" for target in self.layout.label_columns.values()})
        types.update({self.feature_name(c): "bytes" for c in self.categorical})
        types.update({c: "float" for c in self.layout.numeric_columns})
        return types

    def feature_config(self, present_numeric: Sequence[str]) -> features.FeatureConfig:
        categorical = [features.USER_KEY, features.ITEM_KEY]
        categorical += [self.feature_name(c) for c in self.categorical if c != self.layout.domain_column]
        return features.FeatureConfig(categorical=tuple(categorical), numeric=tuple(present_numeric),
                                      num_domains=len(self.layout.domain_map))


def convert(format_name: str, inputs: Sequence[str], out: str, num_shards: int = 1) -> int:
    """Converts the input files into a data folder at ``out``; returns the number of rows written."""
    layout = LAYOUTS.get(str(format_name).lower())
    if layout is None:
        raise UserError(f"--format {format_name!r}: unknown dataset format; choose from {sorted(LAYOUTS)}")
    if not inputs:
        raise UserError("--input: no files given")
    staging.check_output_dir(out)
    converter = _Converter(layout)
    with staging.staged_output_dir(out) as tmp:
        writer = None
        try:
            for path in inputs:
                rows_in_file = 0
                for first_row, chunk in _read_chunks(path):
                    if first_row == 1:
                        converter.start_file(path, list(chunk.columns))
                    rows_in_file += len(chunk)
                    if writer is None:
                        writer = log_writers.ShardedWriter(os.path.join(tmp, dataset.LOGS_DIR), "tfrecord",
                                                           num_shards, converter.dtypes())
                    columns = converter.convert(path, first_row, chunk)
                    if len(columns[features.LABEL_KEY]):
                        writer.write(columns)
                if rows_in_file == 0:
                    raise UserError(f"{path}: no data rows (header only)")
        finally:
            if writer is not None:
                writer.close()
        if writer.rows == 0:
            raise UserError(f"{', '.join(inputs)}: no rows left after keeping domains {sorted(layout.domain_map)} "
                            f"of column {layout.domain_column!r}")
        present_numeric = [c for c in layout.numeric_columns if c in (converter.columns or ())]
        converter.feature_config(present_numeric).save(os.path.join(tmp, dataset.FEATURE_CONFIG_FILE))
        with open(os.path.join(tmp, SOURCE_FILE), "w") as f:
            json.dump({"format": layout.name, "inputs": [os.path.abspath(p) for p in inputs],
                       "domain_column": layout.domain_column,
                       "domain_map": {str(k): v for k, v in layout.domain_map.items()}, **converter.stats}, f, indent=2)
    return converter.stats["rows_written"]
