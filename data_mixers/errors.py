"""The one exception type of data_mixers, raised for every input the user can fix."""


class MixerError(Exception):
    """A problem with the data or the data configuration, phrased for the user (file, line, key)."""


class ConfigError(MixerError):
    """A configuration file or override that does not match the typed schema."""
