"""Evaluation: how much better than its base an adapter is on a prepared split, with bootstrap intervals.

``evaluate_dirs`` is ``appliance eval``; ``evaluate_pair`` is the end-of-run step of every training run (base and
adapter from one peft model); ``report`` builds the one report format both print and store; ``score_served``
scores what a serving Backend really serves (the monitor's strategy, same figures). Design notes:
``appliance/evaluation/README.md``.
"""

from appliance.evaluation._metrics import Estimate, bootstrap, exact_match, normalise_answer
from appliance.evaluation._served import ServedScores, score_served
from appliance.evaluation._service import (
    EvalOptions,
    ModelScores,
    evaluate_dirs,
    evaluate_pair,
    model_figures,
    report,
    score_model,
)

__all__ = [
    "Estimate",
    "EvalOptions",
    "ModelScores",
    "ServedScores",
    "bootstrap",
    "evaluate_dirs",
    "evaluate_pair",
    "exact_match",
    "model_figures",
    "normalise_answer",
    "report",
    "score_model",
    "score_served",
]
