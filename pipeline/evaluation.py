"""What the Evaluator reports: the TFMA EvalConfig (metrics and plots, no blessing).

Metrics, overall and per ``domain_id`` slice: example count, AUC, calibration
(mean prediction / mean label), mean label and prediction, binary cross-entropy, and a
calibration plot. No thresholds and no baseline model: TFMA's thresholds read only point
estimates, so the blessing is the BlessingGate's (crocodile.pipeline.blessing), which
tests the paired AUC difference against the served model. TFMA's own blessing output is
therefore always "blessed" and nothing reads it.
"""
import tensorflow_model_analysis as tfma

from crocodile.pipeline import configs

# Reported for every slice.
REPORTED_METRICS = ("ExampleCount", "AUC", "Calibration", "MeanLabel", "MeanPrediction",
                    "BinaryCrossentropy", "CalibrationPlot")


def build_eval_config() -> tfma.EvalConfig:
    """EvalConfig for the exported model's ``serving_default`` on raw eval examples."""
    overall = tfma.SlicingSpec()
    metrics = [tfma.MetricConfig(class_name=name) for name in REPORTED_METRICS]
    return tfma.EvalConfig(
        model_specs=[tfma.ModelSpec(
            signature_name="serving_default",
            preprocessing_function_names=["transform_features"],
            label_key=configs.LABEL_KEY,
            prediction_key=configs.PREDICTION_KEY)],
        slicing_specs=[overall, tfma.SlicingSpec(feature_keys=[configs.SLICE_FEATURE])],
        metrics_specs=[tfma.MetricsSpec(metrics=metrics)])
