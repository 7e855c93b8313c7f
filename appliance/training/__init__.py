"""Training: DP-LoRA on a prepared dataset, the privacy-budget ledger, canaries and checkpoints.

``train(config, settings)`` runs one job (see ``TrainingRun`` for its phases); ``Ledger`` is the persistent
privacy-budget ledger; ``load_privacy_policy`` reads ``policies/privacy.yaml`` (budgets and the approval limits
the registry enforces). Design notes: ``appliance/training/README.md``.
"""

from appliance.training._accounting import composed_epsilon, noise_for_epsilon
from appliance.training._canaries import exposure
from appliance.training._config import TrainConfig, make_config
from appliance.training._data import Record, encode, read_prepared
from appliance.training._distributed import World, current_world, run_distributed
from appliance.training._launch import LaunchOptions, without_launcher_options
from appliance.training._launch import launch as launch_ranks
from appliance.training._ledger import Ledger, LedgerEntry, LedgerSummary
from appliance.training._memory import MemoryEstimate, estimate_memory, model_shape
from appliance.training._planner import TrainingPlan, plan_training
from appliance.training._policy import ApprovalLimits, DatasetBudget, PrivacyPolicy, load_privacy_policy
from appliance.training._run import StepInfo, TrainingRun, TrainResult, read_metadata, train

__all__ = [
    "ApprovalLimits",
    "DatasetBudget",
    "LaunchOptions",
    "Ledger",
    "LedgerEntry",
    "LedgerSummary",
    "MemoryEstimate",
    "PrivacyPolicy",
    "Record",
    "StepInfo",
    "TrainConfig",
    "TrainResult",
    "TrainingPlan",
    "TrainingRun",
    "World",
    "composed_epsilon",
    "current_world",
    "encode",
    "estimate_memory",
    "exposure",
    "launch_ranks",
    "load_privacy_policy",
    "make_config",
    "model_shape",
    "noise_for_epsilon",
    "plan_training",
    "read_metadata",
    "read_prepared",
    "run_distributed",
    "train",
    "without_launcher_options",
]
