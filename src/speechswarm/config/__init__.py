"""Typed, frozen configuration, validated once at the edge.

    speechswarm train --config tiny optim.lr=3e-4 train.epochs=20

`sections` holds one frozen dataclass per concern (data, features, tokenizer, augment, model,
optim, train) and `Config`; `p2p` the peer-to-peer section and its range checks; `load`
reads presets and YAML files, applies `a.b=c` overrides and checks keys and types, naming
the dotted key. Builders (`speechswarm.build`) turn sections into plain constructor
arguments: config objects never enter model or data classes.
"""

from speechswarm.config.load import (
    PRESET_DIR,
    dump_yaml,
    from_dict,
    load_config,
    preset_names,
    to_dict,
)
from speechswarm.config.p2p import (
    ALGORITHMS,
    GRAPH_ALGORITHMS,
    TOPOLOGIES,
    P2PConfig,
    check_p2p,
    check_run,
    parse_run,
    run_name,
)
from speechswarm.config.sections import (
    AugmentConfig,
    Config,
    DataConfig,
    FeatureConfig,
    ModelConfig,
    OptimConfig,
    TokenizerConfig,
    TrainConfig,
)
from speechswarm.errors import ConfigError

__all__ = [
    "ALGORITHMS",
    "GRAPH_ALGORITHMS",
    "PRESET_DIR",
    "TOPOLOGIES",
    "AugmentConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "FeatureConfig",
    "ModelConfig",
    "OptimConfig",
    "P2PConfig",
    "TokenizerConfig",
    "TrainConfig",
    "check_p2p",
    "check_run",
    "dump_yaml",
    "from_dict",
    "load_config",
    "parse_run",
    "preset_names",
    "run_name",
    "to_dict",
]
