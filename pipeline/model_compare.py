"""Candidate vs baseline SavedModel on the same eval rows: the decision the pipeline takes.

Both ``crocodile model compare`` and the pipeline's BlessingGate call ``compare``, so a
model refused by one is refused by the other. The rows are raw log rows (canonical
schema) serialized as tf.Examples and scored through each SavedModel's
``serving_default``, the signature TF Serving answers with; the statistic is
crocodile.model.comparison.blessing_decision, clustered by user.

Two checks (values in crocodile.pipeline.configs):
- absolute, always: the candidate's overall AUC >= OVERALL_AUC_LOWER_BOUND (with no
  baseline, e.g. the first run, this is the only check);
- against the baseline: the noise-aware blessing rule (no domain, and not the whole
  eval set, significantly worse by more than the tolerance; Holm across domains).
"""
import dataclasses
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from crocodile.errors import UserError
from crocodile.model.comparison import STATISTICS
from crocodile.model.features import DOMAIN_KEY, LABEL_KEY, USER_KEY
from crocodile.pipeline import configs

SCORE_BATCH = 16384
READ_BATCH = 65536  # records per tf.data batch (one numpy call each, not one per record)
NO_BASELINE = "no baseline"


@dataclasses.dataclass
class EvalRows:
    """Serialized raw tf.Examples with the columns the decision needs."""
    serialized: np.ndarray   # object array of bytes
    labels: np.ndarray       # int64 0/1
    domains: np.ndarray      # int64
    users: np.ndarray        # str

    def __len__(self) -> int:
        return int(self.labels.size)


def _columns(records: List[bytes], keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """Single-valued columns of serialized Examples, whatever list type each was written with.

    tfx_bsl's Example decoder (C++, to Arrow) infers each feature's type from the data, as
    the per-record protobuf parse this replaces did, at ~1/4 of its cost."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from tfx_bsl.coders import example_coder

    try:
        batch = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records)
    except Exception as error:  # a feature with different list types in different rows
        raise UserError(f"eval rows cannot be decoded as tf.Examples: {error}") from None
    columns = {}
    for key in keys:
        index = batch.schema.get_field_index(key)
        column = batch.column(index) if index >= 0 else None
        lengths = (np.zeros(len(records), np.int64) if column is None or pa.types.is_null(column.type)
                   else column.value_lengths().fill_null(0).to_numpy(zero_copy_only=False))
        bad = np.flatnonzero(lengths != 1)
        if bad.size:
            raise UserError(f"eval row {bad[0]}: column {key!r} must hold exactly one value, found {lengths[bad[0]]}")
        values = column.flatten()
        if pa.types.is_large_binary(values.type) or pa.types.is_binary(values.type):
            values = pc.cast(values, pa.large_string())
        columns[key] = values.to_numpy(zero_copy_only=False)
    return columns


def rows_from_records(records: Sequence[bytes]) -> EvalRows:
    """EvalRows from serialized raw tf.Examples (ExampleGen's output, TFRecord logs)."""
    records = list(records)
    if not records:
        raise UserError("no eval rows")
    columns = _columns(records, (LABEL_KEY, DOMAIN_KEY, USER_KEY))
    labels = columns[LABEL_KEY].astype(np.int64)
    if not np.isin(labels, (0, 1)).all():
        raise UserError(f"column {LABEL_KEY!r} must be 0 or 1")
    return EvalRows(np.array(records, dtype=object), labels,
                    columns[DOMAIN_KEY].astype(np.int64), columns[USER_KEY].astype(str))


def _read_tfrecords(paths: Sequence[str]) -> List[bytes]:
    import tensorflow as tf

    records = []
    for path in paths:
        compression = "GZIP" if path.endswith(".gz") else None
        for batch in tf.data.TFRecordDataset(path, compression_type=compression).batch(READ_BATCH):
            records.extend(batch.numpy().tolist())
    return records


def examples_split_rows(split_uri: str) -> EvalRows:
    """Rows of one split of an ExampleGen ``Examples`` artifact (gzipped TFRecord shards)."""
    import tensorflow as tf

    files = sorted(tf.io.gfile.glob(f"{split_uri.rstrip('/')}/*"))
    if not files:
        raise UserError(f"{split_uri}: no example files")
    return rows_from_records(_read_tfrecords(files))


def data_folder_rows(data_dir: str) -> EvalRows:
    """Every row of a data folder's logs (DIR/logs/*.csv or *.tfrecord.gz), or, when DIR is an
    ExampleGen ``Examples`` artifact, its ``Split-eval`` rows (the pipeline's own eval split)."""
    from crocodile.pipeline import data_source

    split = os.path.join(data_dir, f"Split-{configs.EVAL_SPLIT}")
    if os.path.isdir(split):
        return examples_split_rows(split)
    if not os.path.isdir(data_dir):
        raise UserError(f"--data {data_dir}: no such folder")
    if data_source.detect_format(data_dir) == data_source.TFRECORD:
        return rows_from_records(_read_tfrecords(data_source.log_files(data_dir)))
    return rows_from_records(_csv_records(data_dir, data_source.load_feature_config(data_dir)))


def _csv_records(data_dir: str, feature_config) -> List[bytes]:
    """CSV log rows as serialized tf.Examples typed by the feature config (ids stay strings)."""
    from crocodile.pipeline.transform_local import raw_input_columns, read_logs
    from crocodile.serving.examples import make_example

    columns = raw_input_columns(feature_config)
    frame = read_logs(data_dir, columns)
    keys = list(columns)
    casts = {k: (str if t == "bytes" else float if t == "float" else int) for k, t in columns.items()}
    return [make_example({k: casts[k](v) for k, v in zip(keys, row)}).SerializeToString()
            for row in zip(*(frame[k].tolist() for k in keys))]


def score(model_dir: str, serialized: np.ndarray, batch_size: int = SCORE_BATCH) -> np.ndarray:
    """Click probabilities from ``serving_default`` of the SavedModel in ``model_dir``."""
    import tensorflow as tf

    loaded = tf.saved_model.load(model_dir)
    if "serving_default" not in loaded.signatures:
        raise UserError(f"{model_dir}: the SavedModel has no serving_default signature")
    function = loaded.signatures["serving_default"]
    out = []
    for start in range(0, serialized.size, batch_size):
        batch = tf.constant(serialized[start:start + batch_size].tolist(), tf.string)
        out.append(function(examples=batch)[configs.PREDICTION_KEY].numpy().reshape(-1))
    scores = np.concatenate(out).astype(np.float64)
    if np.isnan(scores).any():
        raise UserError(f"{model_dir}: serving_default returned NaN scores")
    return scores


def saved_model_dir(path: str) -> str:
    """``path`` if it holds saved_model.pb, else the newest integer version under it (a base path)."""
    import tensorflow as tf

    if tf.io.gfile.exists(f"{path.rstrip('/')}/saved_model.pb"):
        return path
    found = latest_version_dir(path)
    if found is None:
        raise UserError(f"{path}: no saved_model.pb here or in an integer version folder under it")
    return found


def latest_version_dir(base_path: str) -> Optional[str]:
    """The highest integer version folder holding a SavedModel under ``base_path`` (TF Serving's
    layout, what the Pusher writes), or None. Works on any TensorFlow filesystem (gs://, ...)."""
    import tensorflow as tf

    base = base_path.rstrip("/")
    if not tf.io.gfile.isdir(base):
        return None
    versions = sorted((int(name.rstrip("/")) for name in tf.io.gfile.listdir(base) if name.rstrip("/").isdigit()),
                      reverse=True)
    for version in versions:
        if tf.io.gfile.exists(f"{base}/{version}/saved_model.pb"):
            return f"{base}/{version}"
    return None


def _candidate_only(rows: EvalRows, candidate: np.ndarray, rule, domain_ids: Sequence[int]) -> Dict:
    """Per-domain AUCs when there is nothing to compare with (first push)."""
    from crocodile.model.comparison import INSUFFICIENT, auc_contrast

    def auc(mask):
        result = auc_contrast(rows.labels[mask], candidate[mask], [1.0], rows.users[mask])
        return {"candidate_auc": result.estimate, "se": result.se, "clicks": result.positives,
                "rows": result.positives + result.negatives}

    domains = {}
    for d in domain_ids:
        entry = auc(rows.domains == d)
        enough = entry["clicks"] >= rule.min_clicks and entry["rows"] > entry["clicks"]
        entry["status"] = NO_BASELINE if enough else INSUFFICIENT
        if not enough:
            entry["reason"] = f"{entry['clicks']} clicks < {rule.min_clicks} needed" \
                if entry["clicks"] < rule.min_clicks else "no non-clicks"
        domains[str(d)] = entry
    overall = auc(np.ones(len(rows), bool))
    overall["status"] = NO_BASELINE
    return {"blessed": True, "reasons": [], "rule": dataclasses.asdict(rule), "overall": overall,
            "domains": domains,
            "insufficient_evidence": [d for d in domain_ids if domains[str(d)]["status"] == INSUFFICIENT]}


def candidate_overall_auc(rows: EvalRows, candidate: np.ndarray) -> float:
    """The absolute check's statistic: the candidate's AUC over every eval row."""
    from crocodile.model.comparison import auc_contrast

    return float(auc_contrast(rows.labels, np.ravel(candidate), [1.0]).estimate)


def compare(rows: EvalRows, candidate: np.ndarray, baseline: Optional[np.ndarray], rule=None,
            domain_ids: Optional[Sequence[int]] = None,
            auc_lower_bound: float = configs.OVERALL_AUC_LOWER_BOUND) -> Dict:
    """The blessing decision (JSON-ready) for candidate scores against baseline scores.

    ``baseline`` None means nothing is served yet: only the absolute check applies.
    """
    from crocodile.model.comparison import blessing_decision

    rule = rule or configs.blessing_rule()
    wanted = sorted(set(int(d) for d in (domain_ids if domain_ids is not None else np.unique(rows.domains))))
    if baseline is None:
        decision = _candidate_only(rows, candidate, rule, wanted)
    else:
        decision = blessing_decision(rows.labels, baseline, candidate, rows.domains, clusters=rows.users,
                                     rule=rule, domain_ids=wanted)
    overall_auc = candidate_overall_auc(rows, candidate)
    absolute_ok = bool(overall_auc >= auc_lower_bound)
    decision["absolute"] = {"overall_auc": overall_auc, "lower_bound": auc_lower_bound, "ok": absolute_ok}
    if not absolute_ok:
        decision["reasons"].insert(0, f"overall: candidate AUC {overall_auc:.4f} is below the absolute "
                                      f"lower bound {auc_lower_bound}")
        decision["blessed"] = False
    decision["has_baseline"] = baseline is not None
    if baseline is not None and rule.statistic != "gauc":  # with a gAUC rule the decision holds it
        decision["gauc"] = gauc_comparison(rows, candidate, baseline, wanted, rule.alpha)
    decision["eval_rows"] = len(rows)
    decision["eval_clicks"] = int(rows.labels.sum())
    decision["eval_users"] = int(np.unique(rows.users).size)
    return decision


def gauc_comparison(rows: EvalRows, candidate: np.ndarray, baseline: np.ndarray, domain_ids: Sequence[int],
                    alpha: float) -> Dict:
    """Candidate - baseline gAUC (per-user AUC, weighted by rows), overall and per domain, with a
    user-clustered interval. Information beside the decision, not part of the rule: gAUC is the
    ranking within one user's impressions, closer to what a request's ranking changes online
    than the AUC pooled over users, which also rewards ranking users against each other."""
    from crocodile.model.comparison import paired_gauc

    candidate, baseline = np.ravel(candidate), np.ravel(baseline)

    def one(on: np.ndarray) -> Dict:
        result = paired_gauc(rows.labels[on], baseline[on], candidate[on], rows.users[on], alpha)
        return result.to_dict() if result else {"users": 0}

    return {"overall": one(np.ones(len(rows), dtype=bool)),
            "domains": {str(d): one(rows.domains == d) for d in domain_ids}}


def compare_models(rows: EvalRows, candidate_dir: str, baseline_dir: Optional[str], rule=None,
                   domain_ids: Optional[Sequence[int]] = None) -> Dict:
    """Scores the rows with both SavedModels and returns ``compare``'s decision with the paths."""
    candidate = score(candidate_dir, rows.serialized)
    baseline = score(baseline_dir, rows.serialized) if baseline_dir else None
    decision = compare(rows, candidate, baseline, rule, domain_ids)
    decision["candidate_model"] = candidate_dir
    decision["baseline_model"] = baseline_dir
    return decision


def _fmt(value, spec):
    return "-" if value is None or (isinstance(value, float) and np.isnan(value)) else format(value, spec)


def summary_lines(decision: Dict) -> List[str]:
    """One line per slice (overall first): clicks, AUCs, paired difference and status."""
    lines = []
    slices = [("overall", decision["overall"])] + [(f"domain {d}", v) for d, v in decision["domains"].items()]
    # Against a baseline every slice is in the rule's statistic; the first run reports AUC.
    key = decision.get("statistic", "auc") if decision.get("has_baseline") else "auc"
    for name, r in slices:
        text = (f"{name:<10} {r.get('clicks', 0):>6} clicks  candidate {STATISTICS[key]} "
                f"{_fmt(r.get(f'candidate_{key}'), '.4f')}")
        if decision.get("has_baseline") and "diff" in r:
            text += (f"  baseline {_fmt(r[f'baseline_{key}'], '.4f')}  diff {_fmt(r['diff'], '+.4f')} "
                     f"[{_fmt(r['ci_low'], '+.4f')}, {_fmt(r['ci_high'], '+.4f')}]")
        text += f"  {r['status']}"
        if r.get("reason"):
            text += f" ({r['reason']})"
        lines.append(text)
    return lines


def gauc_lines(decision: Dict) -> List[str]:
    """The gAUC comparison beside the decision (none without a baseline)."""
    if not decision.get("gauc"):
        return []
    lines = ["gAUC (per-user ranking; information, not part of the rule):"]
    slices = [("overall", decision["gauc"]["overall"])] + \
        [(f"domain {d}", v) for d, v in decision["gauc"]["domains"].items()]
    for name, r in slices:
        if r.get("users"):
            lines.append(f"  {name:<10} {r['users']:>6} users  candidate {r['candidate_gauc']:.4f}  baseline "
                         f"{r['baseline_gauc']:.4f}  diff {r['diff']:+.4f} [{r['ci_low']:+.4f}, {r['ci_high']:+.4f}]")
        else:
            lines.append(f"  {name:<10} no user with both a click and a non-click")
    return lines


def describe(decision: Dict) -> str:
    rule = decision["rule"]
    head = (f"{decision['eval_rows']} eval rows, {decision['eval_clicks']} clicks, {decision['eval_users']} users; "
            f"rule: refuse when a domain is significantly worse by > {rule['domain_tolerance']} "
            f"{STATISTICS[rule.get('statistic', 'auc')]} or overall "
            f"by > {rule['overall_tolerance']} (alpha {rule['alpha']}, Holm; domains need >= "
            f"{rule['min_clicks']} clicks)")
    if not decision.get("has_baseline"):
        head += "\nno baseline: only the absolute check (overall AUC >= " \
                f"{decision['absolute']['lower_bound']})"
    lines = [head, *summary_lines(decision), f"blessed: {'yes' if decision['blessed'] else 'no'}"]
    lines += [f"  reason: {reason}" for reason in decision["reasons"]]
    lines += gauc_lines(decision)
    return "\n".join(lines)

