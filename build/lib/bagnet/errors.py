"""The project's own errors: things a user can fix. The runner prints these as one line (exit 2);
every other exception is a bug and keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """Base class: the message is one line that says what to change."""


class ConfigError(UserError, ValueError):
    """A config that cannot run (unknown task, wrong type, a run dir that holds another run)."""


class DataError(UserError, ValueError):
    """A data problem: missing root, wrong layout, empty class folder."""


class WeightsError(UserError, RuntimeError):
    """Weights could not be found, downloaded, trusted or matched to the model."""


class LockError(UserError, RuntimeError):
    """A run or results directory is in use by another process (its lock file names the process)."""


class TrainingDiverged(UserError, FloatingPointError):
    """The loss became NaN or infinite; the checkpoints of earlier epochs are kept as they were."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM: where it stopped, and that the same command resumes."""
