"""The one exception type of the trainer, for problems the user can fix (printed as one line by the CLI)."""

from synthmix.errors import UserError


class TrainerError(UserError):
    """A run that cannot start or continue, phrased for the user (file, key, step)."""
