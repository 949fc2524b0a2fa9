"""Loggers that keep a run's history whole across resumes.

Weights & Biases: online with an account, offline without one, never a login prompt; one wandb run
per training run, continued when the training run is resumed. CSV: a resumed run appends to its
``metrics.csv`` (Lightning's own CSV logger deletes the file when it finds it)."""

from __future__ import annotations

import logging
import os
import secrets
import string
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only

from segfw.choices import choose
from segfw.errors import ConfigError
from segfw.lightning_compat import appending_csv_writer
from segfw.training.requeue import requeue_checkpoint

log = logging.getLogger(__name__)

# The run dir file holding the wandb run id, read back when the run is resumed.
ID_FILE = "wandb_id"
MODES = ("online", "offline", "disabled")


class CSVLogger(pl.loggers.CSVLogger):
    """Lightning's CSV logger, except that a run resumed in its own run dir appends to
    ``metrics.csv`` instead of replacing it, so the epochs before the interruption stay."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        return appending_csv_writer(self)


def wandb_logger(
    save_dir: str,
    project: str = "segfw",
    entity: str | None = None,
    group: str | None = None,
    name: str | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
    id: str | None = None,
    resume_from: str | None = None,
) -> WandbLogger:
    """A Lightning WandbLogger for a training run, set up from the ``logger/wandb`` config.

    Args:
        save_dir: the run dir; wandb writes its files into ``<save_dir>/wandb/`` and the run id
            into ``<save_dir>/wandb_id``.
        project: the wandb project.
        entity: the team or user owning the project; ``None``: the account's default entity.
        group: runs to show together (the command layer passes the sweep or the experiment).
        name: the run's name (the command layer passes the job's command-line overrides);
            ignored when a run is continued, which keeps its name.
        tags: labels to filter runs by.
        mode: ``online``, ``offline`` or ``disabled``; ``None``: ``$WANDB_MODE`` if set, else
            ``online`` when W&B credentials are found (``WANDB_API_KEY``, ``wandb login``) and
            ``offline`` when none are.
        id: the wandb run id; ``None``: a new run, or the run of the run dir being resumed.
        resume_from: the ``ckpt_path`` training starts from. When it lies in a run dir that holds
            a ``wandb_id`` (``last`` means this run dir), that wandb run is continued; so is this
            run dir's when ``None`` on a SLURM job requeued into it (Lightning resumes that from
            its ``hpc_ckpt_<n>.ckpt``).

    Raises:
        ConfigError: an unknown mode, or ``online`` without credentials.
    """
    mode = _choose_mode(mode)
    resumed = _resumed_run_id(resume_from, Path(save_dir)) if id is None else None
    run_id = id or (resumed[0] if resumed else _new_run_id())
    logger = WandbLogger(
        save_dir=save_dir,
        project=project,
        entity=entity,
        group=group,
        # The continued run keeps its name; the resume command's name could differ.
        name=None if resumed else name,
        tags=list(tags),
        id=run_id,
        resume="allow",
        mode=mode,
        job_type="train",
    )
    if rank_zero_only.rank == 0:  # type: ignore[attr-defined]  # set by Lightning at import
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        (Path(save_dir) / ID_FILE).write_text(run_id + "\n")
        if resumed:
            log.info("wandb: continuing run %s of %s", run_id, resumed[1])
    return logger


def _new_run_id() -> str:
    # Chosen here rather than by wandb.init, so that it is known (and saved) before the run starts.
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def _choose_mode(mode: str | None) -> str:
    """The wandb mode to run in, said in the log when it is not online."""
    source = "logger.wandb.mode"
    if mode is None and os.environ.get("WANDB_MODE"):
        mode, source = os.environ["WANDB_MODE"], "WANDB_MODE"
    if mode == "dryrun":  # wandb's old name for offline, still accepted in WANDB_MODE
        mode = "offline"
    if mode is not None:
        choose(MODES, mode, source, "null chooses online or offline by the credentials found")
    if mode == "offline":
        log.info(
            "wandb: OFFLINE (%s=offline): the run is written under <run dir>/wandb/; upload it "
            "later with `wandb sync <run dir>/wandb/offline-run-*`.",
            source,
        )
    if mode in (None, "online") and not _has_credentials():
        if mode == "online":
            raise ConfigError(
                f"{source}=online but no W&B credentials were found: run `wandb login` or set "
                f"WANDB_API_KEY, or use logger.wandb.mode=offline and `wandb sync` later."
            )
        log.warning(
            "wandb: OFFLINE: no W&B credentials found (WANDB_API_KEY, `wandb login`). The run is "
            "written under <run dir>/wandb/; upload it later with `wandb sync "
            "<run dir>/wandb/offline-run-*`. Set WANDB_MODE=offline to silence this."
        )
        mode = "offline"
    return mode or "online"


def _has_credentials() -> bool:
    import wandb

    # prompt=False: look for a key (environment, netrc, settings) without ever asking for one and
    # without a network call (verify=False).
    return wandb.login(prompt=False, verify=False)


def _resumed_run_id(resume_from: str | None, save_dir: Path) -> tuple[str, Path] | None:
    """The wandb id kept in the run dir of the checkpoint training resumes from, and that dir."""
    if resume_from is None:
        # A requeued SLURM job starts with ckpt_path=null, and Lightning resumes it from this run
        # dir's hpc_ckpt_<n>.ckpt: this run dir's wandb run goes on, as with ``last``.
        requeued = requeue_checkpoint(save_dir)
        if requeued is None:
            return None
        resume_from, candidates = str(requeued), [save_dir]
    elif resume_from == "last":
        candidates = [save_dir]
    else:
        checkpoint = Path(resume_from).expanduser().resolve()
        # <run dir>/checkpoints/last.ckpt, or a checkpoint kept directly in a run dir.
        candidates = [checkpoint.parent.parent, checkpoint.parent]
    for directory in candidates:
        path = directory / ID_FILE
        if path.is_file() and path.read_text().strip():
            return path.read_text().strip(), directory
    log.info("wandb: no %s beside %s; starting a new wandb run.", ID_FILE, resume_from)
    return None


@contextmanager
def closing_wandb_run() -> Iterator[None]:
    """Finishes the wandb run opened inside the block, marked failed if the block raises.

    WandbLogger reuses a run left open in the process, so without this every job of a sweep
    after the first would log into the first job's run. A run that was open before the block (a
    notebook's own) is left open.
    """
    wandb = sys.modules.get("wandb")
    before = wandb.run if wandb else None
    try:
        yield
    except BaseException:
        _finish(before, exit_code=1)
        raise
    _finish(before, exit_code=0)


def _finish(before: object, exit_code: int) -> None:
    wandb = sys.modules.get("wandb")
    run = wandb.run if wandb else None
    if wandb is None or run is None or run is before:
        return
    offline = run.settings.mode == "offline"
    sync_dir = run.settings.sync_dir
    wandb.finish(exit_code=exit_code)
    if offline:
        log.info("wandb: offline run saved; upload it with `wandb sync %s`", sync_dir)
