"""Typed settings: one dataclass per config group and per console script.

The YAML files under `waveglow/configs/` give the values; these classes give the types, the
allowed ranges and choices, and the one-line help of every key (shown by `--help`). The CLI
layer composes a config with Hydra, turns it into these objects and calls `validate`; the core
receives the objects (or plain values) and never sees Hydra or OmegaConf.

    schema   `setting`, `validate`, `to_dict` / `from_dict`, `unknown_key`
    groups   AudioConfig, DataConfig, ModelConfig, TrainConfig (and their nested blocks)
    apps     one class per console script; `APPS` and `GROUPS`

Importing this package registers nothing: `register_schemas()` (called by the CLI layer) puts
the schemas into Hydra's ConfigStore.
"""

from __future__ import annotations

import dataclasses
import typing

from waveglow.config.apps import (
    APPS,
    CONVENTIONS,
    GROUPS,
    BenchApp,
    ConvertApp,
    DistillApp,
    DownloadApp,
    EnhanceApp,
    ExportApp,
    ImportNvidiaApp,
    InferenceSettings,
    MelApp,
    PeakConfig,
    PreprocessApp,
    ResynthesizeApp,
    ScoreApp,
    SynthesizeApp,
    TrainApp,
)
from waveglow.config.groups import (
    AudioConfig,
    DataConfig,
    DistillConfig,
    DownloadConfig,
    GuardConfig,
    ModelConfig,
    SplitsConfig,
    TrainConfig,
    WNConfig,
)
from waveglow.config.schema import (
    MISSING,
    ConfigError,
    dataclass_of,
    field_kind,
    from_dict,
    setting,
    to_dict,
    unknown_key,
    validate,
)


def register_schemas() -> None:
    """Put the schemas into Hydra's ConfigStore: `schema/<group>` for the group YAMLs and
    `schema/<app>` for each console script's YAML (referenced from their defaults lists)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    for group, cls in GROUPS.items():
        cs.store(group="schema", name=group, node=cls)
    for name, cls in APPS.items():
        cs.store(group="schema", name=name, node=cls)


def _resolve_annotations() -> None:
    # `from __future__ import annotations` leaves each field's type as a string; the checks above
    # (and the CLI's) read `Field.type`, so it is set to the type the string names, once.
    for cls in [*GROUPS.values(), *APPS.values(), SplitsConfig, DownloadConfig, WNConfig, GuardConfig,
                PeakConfig, InferenceSettings]:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            f.type = hints[f.name]


_resolve_annotations()

__all__ = ["dataclass_of", "APPS", "AudioConfig", "BenchApp", "CONVENTIONS", "ConfigError", "ConvertApp", "DataConfig", "DistillApp", "DistillConfig", "DownloadApp", "DownloadConfig", "EnhanceApp", "ExportApp", "GROUPS", "GuardConfig", "ImportNvidiaApp", "InferenceSettings", "MISSING", "MelApp", "ModelConfig", "PeakConfig", "PreprocessApp", "ResynthesizeApp", "ScoreApp", "SplitsConfig", "SynthesizeApp", "TrainApp", "TrainConfig", "WNConfig", "field_kind", "from_dict", "register_schemas", "setting", "to_dict", "unknown_key", "validate"]
