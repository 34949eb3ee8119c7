"""Evaluation of frozen SSL features as SEER reports it: linear probe, low-shot and k-NN, with
random-init and raw-pixel baselines on the same splits. The CLI is seer.eval; docs/evaluation.md
describes the protocol."""

from seer.evaluation.data import DataError, EvalData, digits_data, folder_data, split_files_data
from seer.evaluation.features import RawPixels, extract_features, reestimate_batchnorm
from seer.evaluation.knn import knn_predict
from seer.evaluation.lowshot import LabelFractionError, per_class_counts, sample_per_class
from seer.evaluation.probe import Standardizer, fit_softmax_regression, train_linear_probe
from seer.evaluation.protocol import FeatureResult, LabelSubsets, Protocol, evaluate_features
from seer.evaluation.report import EvalReport, markdown_table, write_report
from seer.evaluation.runner import Extraction, run_evaluation

__all__ = [
    "DataError",
    "EvalData",
    "EvalReport",
    "Extraction",
    "FeatureResult",
    "LabelFractionError",
    "LabelSubsets",
    "Protocol",
    "RawPixels",
    "Standardizer",
    "digits_data",
    "evaluate_features",
    "extract_features",
    "fit_softmax_regression",
    "folder_data",
    "knn_predict",
    "markdown_table",
    "per_class_counts",
    "reestimate_batchnorm",
    "run_evaluation",
    "sample_per_class",
    "split_files_data",
    "train_linear_probe",
    "write_report",
]
