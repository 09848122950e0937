"""The one error type the data pipeline raises for mistakes a user can fix.

Every message is one sentence that names the file, directory or key at fault and says what to
do about it; command-line entry points print it without a traceback and exit non-zero.
"""

from __future__ import annotations

from bertgpt_jax.config import ConfigError


class DataError(ConfigError):
    """Bad input data, a missing or incomplete store, or a tokenizer that does not fit.

    A ConfigError (hence a ValueError), so that whatever reports configuration mistakes to the
    user reports these the same way.
    """
