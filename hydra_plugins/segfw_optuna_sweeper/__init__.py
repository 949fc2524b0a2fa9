"""segfw's Optuna sweeper for Hydra (``hydra/sweeper: segfw_optuna``), on Optuna 4 and later.

Hydra imports every module under the ``hydra_plugins`` namespace package when it starts, with or
without the sweep extra: these modules import Optuna only once a sweep runs."""
