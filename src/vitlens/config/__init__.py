"""Typed, validated params: `params.yaml` is the single source of every value
(config/schema.py: the sections and their rules; config/parse.py: loading and checking)."""
from vitlens.config.parse import exp_run_flags, load_params, parse_params, set_key
from vitlens.config.schema import (
    COMPILE_MODES,
    FAITHFULNESS_METHODS,
    POOLS,
    POS_EMBEDS,
    PRECISIONS,
    SOURCES,
    STEMS,
    ConfigError,
    DataConfig,
    EvaluateConfig,
    FaithfulnessConfig,
    ModelConfig,
    Params,
    ReportConfig,
    TrackingConfig,
    TrainConfig,
    VisualizeConfig,
)

__all__ = ["COMPILE_MODES", "FAITHFULNESS_METHODS", "POOLS", "POS_EMBEDS", "PRECISIONS", "SOURCES", "STEMS",
           "ConfigError", "DataConfig", "EvaluateConfig", "FaithfulnessConfig", "ModelConfig", "Params",
           "ReportConfig", "TrackingConfig", "TrainConfig", "VisualizeConfig", "exp_run_flags",
           "load_params", "parse_params", "set_key"]
