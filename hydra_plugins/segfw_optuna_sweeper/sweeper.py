"""The Hydra side of segfw's Optuna sweeper: it turns Hydra's config and launcher into the plain
arguments of segfw.commands.sweeps, which holds the sweep's logic."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf


class SegfwOptunaSweeper(Sweeper):
    def __init__(
        self,
        sampler: Any,
        pruner: Any,
        direction: str,
        storage: str | None,
        study_name: str,
        n_trials: int,
        n_jobs: int,
        params: Any,
    ) -> None:
        self.sampler = sampler
        self.pruner = pruner
        self.direction = direction
        self.storage = storage
        self.study_name = study_name
        self.n_trials = n_trials
        self.n_jobs = n_jobs
        self.params = dict(params or {})

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        # Sweeper's validate_batch_is_legal reads config and hydra_context.
        self.config = config
        self.hydra_context = hydra_context
        self.sweep_dir = Path(config.hydra.sweep.dir)
        self.trial_launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from segfw.errors import SegfwError

        try:
            self._sweep(arguments)
        except SegfwError as error:
            # SystemExit, which Hydra lets through: one message and exit code 1, where Hydra
            # would print an exception with its traceback.
            raise SystemExit(str(error)) from None

    def _sweep(self, arguments: list[str]) -> None:
        # Imported here: Hydra imports this module in every run, with or without Optuna.
        from segfw.commands import sweeps

        sweep_dir = self.sweep_dir
        sweep_dir.mkdir(parents=True, exist_ok=True)  # the journal file goes there
        storage = sweeps.storage_url(self.storage, sweep_dir)
        sampler = OmegaConf.create(self.sampler) if self.sampler else None

        def make_sampler(trials_so_far: int) -> Any:
            if sampler is None:
                return None
            seed = sampler.get("seed")
            return instantiate(sampler, **({} if seed is None else {"seed": seed + trials_so_far}))

        pruner = instantiate(OmegaConf.create(self.pruner)) if self.pruner else None
        study = sweeps.open_study(storage, self.study_name, self.direction, make_sampler, pruner)
        space, fixed = sweeps.search_space(
            {str(k): str(v) for k, v in self.params.items()}, arguments
        )

        def launch(overrides: list[list[str]], numbers: list[int]) -> Sequence[Any]:
            # Each trial's dir is named by its trial number, unique in the study even when
            # several sweeps share it or a crashed one is continued in the same sweep dir.
            batch = [
                [*o, f"hydra.sweep.subdir={n}"] for o, n in zip(overrides, numbers, strict=True)
            ]
            self.validate_batch_is_legal(batch)
            return self.trial_launcher.launch(batch, initial_job_idx=numbers[0])

        pruner_config = OmegaConf.to_container(self.pruner) if self.pruner else None
        assert pruner_config is None or isinstance(pruner_config, dict)
        sweeps.run_sweep(
            study, storage, space, fixed, self.n_trials, self.n_jobs, launch, pruner_config
        )
        sweeps.write_results(study, sweep_dir / sweeps.RESULTS_FILE)
