"""Hydra callback for ``-m`` sweeps whose Optuna study lives in a sweep directory."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import optuna
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"


class OptunaSweepDirectory(Callback):
    """Prepares a sweep for the study of ``segfw/conf/hparams_search/optuna.yaml``.

    - Creates the sweep dir: the sweeper opens ``sqlite:///<sweep dir>/optuna.db`` before the
      launcher creates the directory, and SQLite creates none.
    - Continuing a study (``hydra.sweeper.storage`` naming the first sweep's ``optuna.db``), adds
      the number of trials it holds to the sampler's seed: with the same seed, the sampler's random
      start-up trials would repeat the first sweep's one by one. The seed stays a function of the
      study's history, so a sweep is still reproducible.
    - Refuses to continue a study inside the sweep dir that holds its trials: Hydra numbers the
      jobs of every ``-m`` run from 0, so their dirs would overwrite the first trials'.
    - At the end, logs where the best parameters and value were written.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweeper = config.hydra.sweeper
        storage, study_name = sweeper.get("storage"), sweeper.get("study_name")
        trials = _trials_so_far(storage, study_name)
        if trials and (sweep_dir / "optuna.db").resolve() == _sqlite_path(storage):
            # SystemExit, not an exception: Hydra turns a callback's exceptions into warnings and
            # would go on with the sweep.
            raise SystemExit(
                f"{sweep_dir} already holds {trials} trials of study {study_name!r}; a new -m run "
                f"there would overwrite their dirs. Continue the study from a new sweep dir: drop "
                f"hydra.sweep.dir and pass hydra.sweeper.storage={storage}"
            )
        sweep_dir.mkdir(parents=True, exist_ok=True)
        seed = sweeper.get("sampler", {}).get("seed")
        if trials and seed is not None:
            # Hydra hands callbacks its config read-only; the sweeper is built from it next.
            with read_write(sweeper), open_dict(sweeper):
                sweeper.sampler.seed = seed + trials
            log.info(
                "continuing study %r of %s (%d trials so far): sampler seed %d + %d, so that its "
                "start-up trials are new ones",
                study_name,
                storage,
                trials,
                seed,
                trials,
            )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        results = Path(config.hydra.sweep.dir) / "optimization_results.yaml"
        if results.is_file():
            log.info("best parameters and value: %s", results)


def _sqlite_path(storage: str | None) -> Path | None:
    if not storage or not storage.startswith(SQLITE):
        return None
    return Path(storage[len(SQLITE) :]).resolve()


def _trials_so_far(storage: str | None, study_name: str | None) -> int:
    """The number of trials of ``study_name`` in ``storage``; 0 for a study not started yet."""
    if not storage or not study_name:
        return 0
    path = _sqlite_path(storage)
    if path is not None and not path.is_file():
        return 0  # opening a missing SQLite file would create it
    summaries = optuna.get_all_study_summaries(storage)
    return next((s.n_trials for s in summaries if s.study_name == study_name), 0)
