"""`python -m bertgpt_jax.cli ...`: the `bertgpt` command (launchers and tests run it so)."""

import sys

from bertgpt_jax.cli import entry

sys.exit(entry())
