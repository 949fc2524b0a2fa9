"""The sweeper's config schema: ``hydra/sweeper: segfw_optuna`` (segfw/conf/hparams_search/)."""

# No `from __future__ import annotations`: OmegaConf reads these fields' types at runtime, and
# Hydra's plugin scan runs this module without registering it in sys.modules, which dataclasses
# need to resolve annotations given as strings.
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore


@dataclass
class SegfwOptunaSweeperConf:
    _target_: str = "hydra_plugins.segfw_optuna_sweeper.sweeper.SegfwOptunaSweeper"
    # The sweeper builds the sampler itself: its seed depends on the study's trials so far.
    _recursive_: bool = False
    # An Optuna sampler (_target_ and its arguments); a seed is offset by the trials the study
    # already holds, so that a continued sweep samples new start-up points.
    sampler: Any = field(default_factory=lambda: {"_target_": "optuna.samplers.TPESampler"})
    # An Optuna pruner (_target_ and its arguments), or null: no trial is stopped early.
    pruner: Any = None
    direction: str = "maximize"
    # A SQLAlchemy URL (several machines), or a journal file; null: <sweep dir>/optuna.journal.
    storage: Any = None
    study_name: str = "segfw"
    # The trials this run asks for (a continued study keeps its earlier ones).
    n_trials: int = 20
    # Trials launched at once: with a parallel launcher (submitit), the number of workers.
    n_jobs: int = 1
    # key: a sweep in Hydra's override grammar (choice, range, interval, tag(log, interval)).
    params: dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(
    group="hydra/sweeper", name="segfw_optuna", node=SegfwOptunaSweeperConf, provider="segfw"
)
