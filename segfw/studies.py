"""Optuna studies on disk or in a database, opened the same way by the sweeper, by each trial's
training process (to report its per-epoch metric for pruning) and by the report."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from segfw.errors import ConfigError

if TYPE_CHECKING:
    import optuna
    from optuna.storages import BaseStorage

# A sweep's study when hydra.sweeper.storage names none: a journal file in the sweep dir, which
# every process on one machine can append to (Optuna locks it) and which needs no database.
JOURNAL_FILE = "optuna.journal"
# SQLAlchemy URLs: a database that processes on several machines share (one study, a cluster).
RDB_SCHEMES = ("sqlite", "postgresql", "mysql", "oracle", "mssql")


def open_storage(value: str | Path) -> BaseStorage:
    """The storage that ``value`` names.

    Args:
        value: a SQLAlchemy URL (``sqlite:///study.db``, ``postgresql://user@host/db``), or the
            path of a journal file (created when missing).

    Raises:
        ConfigError: a URL of a kind Optuna cannot open, or a journal path in a missing directory.
    """
    # Imported here: the report names the journal file without needing Optuna.
    from optuna.storages import JournalStorage, RDBStorage
    from optuna.storages.journal import JournalFileBackend

    text = str(value)
    scheme = text.split("://", 1)[0].split("+", 1)[0] if "://" in text else None
    if scheme is not None:
        if scheme not in RDB_SCHEMES:
            raise ConfigError(
                f"hydra.sweeper.storage={text!r}: {scheme}:// is not a database Optuna opens; "
                f"pass a SQLAlchemy URL ({', '.join(s + '://' for s in RDB_SCHEMES)}) or the path "
                f"of a journal file ({JOURNAL_FILE})"
            )
        return RDBStorage(text)
    path = Path(text)
    if not path.parent.is_dir():
        raise ConfigError(
            f"hydra.sweeper.storage={text!r}: the directory {path.parent} does not exist; pass "
            "the path of a journal file in an existing directory, or a database URL"
        )
    return JournalStorage(JournalFileBackend(str(path)))


def open_trial(
    storage: str, study_name: str, number: int, pruner: optuna.pruners.BasePruner | None
) -> optuna.Trial:
    """Trial ``number`` of a study, opened from another process than the one that asked for it
    (a launcher's job, a SLURM job), to report intermediate values and ask ``pruner`` whether to
    prune (a study keeps no pruner; None: never)."""
    import optuna

    opened = open_storage(storage)
    pruner = pruner or optuna.pruners.NopPruner()
    study = optuna.load_study(study_name=study_name, storage=opened, pruner=pruner)
    study_id = opened.get_study_id_from_name(study_name)
    return optuna.Trial(study, opened.get_trial_id_from_study_id_trial_number(study_id, number))
