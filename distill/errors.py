"""Errors a user can fix: each message names the setting or file at fault and how to fix it.

The command-line entry points print these without a traceback; anything else is a bug and
keeps its traceback.
"""


class DistillError(Exception):
    """Base class for user-fixable problems (bad config, missing files, mismatched runs)."""


class ConfigError(DistillError):
    """A config value is missing, out of range or inconsistent with another."""


class DataError(DistillError):
    """A dataset root, class folder or file is missing or unusable."""


class ModelError(DistillError):
    """A diffusion model or checkpoint cannot be found or loaded."""


class BankMismatchError(DistillError):
    """An existing patch bank was made under a different scoring config."""
