"""Every error type the package raises for conditions a user can fix or must be told about.

A `ConfigError` (and each subclass) is a mistake a user can fix: its message is one sentence
naming the key, file or directory at fault and what to do about it, and the command line prints
it without a traceback and exits 2. `NonFiniteError` is a runtime fault of the training itself.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-facing configuration mistake; the message names the key and the fix."""


class FsError(ConfigError):
    """A path whose storage cannot be used here; the message names the fix."""


class DataError(ConfigError):
    """Bad input data, a missing or incomplete store, or a tokenizer that does not fit."""


class CheckpointError(ConfigError):
    """A missing, unreadable or incompatible checkpoint; the message says what to do."""


class NonFiniteError(RuntimeError):
    """Training produced a non-finite loss or gradient with train.nan_policy=stop."""
