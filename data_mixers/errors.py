"""The one exception type of data_mixers, raised for every data problem the user can fix."""

from synthmix.errors import UserError


class MixerError(UserError):
    """A problem with the data or the data configuration, phrased for the user (source, file, line, key)."""
