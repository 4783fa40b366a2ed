"""What the Evaluator checks: the TFMA EvalConfig and the domains that get thresholds.

Metrics, overall and per ``domain_id`` slice: example count, AUC, calibration
(mean prediction / mean label), mean label and prediction, binary cross-entropy, and a
calibration plot. Blessing (thresholds from ``configs``):

- overall AUC >= OVERALL_AUC_LOWER_BOUND (no worse than a random ranker);
- against the last blessed model (when there is one): overall AUC may drop by at most
  OVERALL_AUC_MAX_DROP, and each thresholded domain's AUC by at most DOMAIN_AUC_MAX_DROP.

TFMA treats a threshold on a slice absent from the eval data as a missing slice and
refuses to bless, so a domain gets a threshold only when the eval split will hold enough
of its rows (``domains_with_enough_rows``); see configs.MIN_DOMAIN_EVAL_ROWS for why
TFMA's min_slice_size stays at 1.
"""
from typing import Dict, Iterable, List, Sequence

import tensorflow_model_analysis as tfma

from crocodile.pipeline import configs

# Reported for every slice, never thresholded.
REPORTED_METRICS = ("ExampleCount", "Calibration", "MeanLabel", "MeanPrediction",
                    "BinaryCrossentropy", "CalibrationPlot")


def domains_with_enough_rows(domain_counts: Dict[int, int],
                             eval_fraction: float = configs.EVAL_FRACTION,
                             min_rows: int = configs.MIN_DOMAIN_EVAL_ROWS,
                             margin: float = configs.DOMAIN_THRESHOLD_MARGIN) -> List[int]:
    """Domains whose expected eval rows reach ``margin * min_rows``, sorted."""
    needed = margin * min_rows
    return sorted(int(d) for d, n in domain_counts.items() if n * eval_fraction >= needed)


def _auc_change(max_drop: float) -> tfma.GenericChangeThreshold:
    # TFMA checks candidate - baseline >= absolute for HIGHER_IS_BETTER.
    return tfma.GenericChangeThreshold(
        direction=tfma.MetricDirection.HIGHER_IS_BETTER, absolute={"value": -max_drop})


def build_eval_config(threshold_domains: Iterable[int] = (),
                      overall_auc_lower_bound: float = configs.OVERALL_AUC_LOWER_BOUND,
                      overall_auc_max_drop: float = configs.OVERALL_AUC_MAX_DROP,
                      domain_auc_max_drop: float = configs.DOMAIN_AUC_MAX_DROP) -> tfma.EvalConfig:
    """EvalConfig for the exported model's ``serving_default`` on raw eval examples."""
    domains: Sequence[int] = sorted(set(int(d) for d in threshold_domains))
    overall = tfma.SlicingSpec()
    auc = tfma.MetricConfig(
        class_name="AUC",
        per_slice_thresholds=[
            tfma.PerSliceMetricThreshold(
                slicing_specs=[overall],
                threshold=tfma.MetricThreshold(
                    value_threshold=tfma.GenericValueThreshold(
                        lower_bound={"value": overall_auc_lower_bound}),
                    change_threshold=_auc_change(overall_auc_max_drop))),
        ] + [
            tfma.PerSliceMetricThreshold(
                slicing_specs=[tfma.SlicingSpec(feature_values={configs.SLICE_FEATURE: str(d)})],
                threshold=tfma.MetricThreshold(change_threshold=_auc_change(domain_auc_max_drop)))
            for d in domains
        ])
    metrics = [tfma.MetricConfig(class_name=name) for name in REPORTED_METRICS] + [auc]
    return tfma.EvalConfig(
        # serving_default parses raw examples and applies the TFT layer itself; labels and
        # the domain slice are raw features, so the transform is not run a second time.
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            label_key=configs.LABEL_KEY,
            prediction_key=configs.PREDICTION_KEY)],
        slicing_specs=[overall, tfma.SlicingSpec(feature_keys=[configs.SLICE_FEATURE])],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])
