"""PyTorch pooling models: AvgPool, MaxPool, ClsToken and AdaPool over a pre-LN transformer encoder.

from models import ModelConfig, PoolingConfig, build_model
model = build_model(ModelConfig(depth=2, pooling=PoolingConfig(method="adapool", query="mean")))
out = model(x, attention_mask)      # out.pooled (B, D_out), out.weights (B, H, N), out.output
"""

from modelrepo.signal_rules import SignalRule
from models.config import (
    ConfigError,
    DataConfig,
    HeadConfig,
    ModelConfig,
    PoolingConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    load_run_config,
    to_dict,
)
from models.metrics import (
    SIGNAL_RULE,
    WeightQuality,
    estimate_signal_set,
    weight_quality,
)
from models.model import InputError, ModelOutput, PoolingModel, build_model
from models.pooling import AdaPool, AvgPool, ClsToken, MaxPool, Pool

__all__ = [
    "SIGNAL_RULE",
    "AdaPool",
    "AvgPool",
    "ClsToken",
    "ConfigError",
    "DataConfig",
    "HeadConfig",
    "InputError",
    "MaxPool",
    "ModelConfig",
    "ModelOutput",
    "Pool",
    "PoolingConfig",
    "PoolingModel",
    "RunConfig",
    "SignalRule",
    "TrainConfig",
    "WeightQuality",
    "build_model",
    "estimate_signal_set",
    "from_dict",
    "load_run_config",
    "to_dict",
    "weight_quality",
]
