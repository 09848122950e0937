"""Running the launchers' commands, or with `--dry-run` printing them exactly, one a line.

Every launcher builds plain argument lists and hands them to a `Runner`. A dry run prints each
command as a shell line (`shlex.join`, environment first) and executes nothing; a real run echoes
the same line to stderr, prefixed with `+ `, and executes it. So what a dry run shows is what a
real run does.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import TextIO


class LaunchError(Exception):
    """A mistake the user can fix (bad argument, failed command); printed as one sentence."""


def shell_line(argv: Sequence[str], env: Mapping[str, str] | None = None) -> str:
    """`K=V ... cmd args` with every word quoted for a POSIX shell."""
    prefix = [f"{k}={shlex.quote(v)}" for k, v in (env or {}).items()]
    return " ".join(prefix + [shlex.join(argv)])


class Runner:
    def __init__(self, dry_run: bool, out: TextIO | None = None):
        self.dry_run = dry_run
        self.out = out or sys.stdout

    def note(self, text: str) -> None:
        """A comment line in the dry-run listing (also shown, to stderr, in a real run)."""
        print(f"# {text}", file=self.out if self.dry_run else sys.stderr, flush=True)

    def _echo(self, argv: Sequence[str], env: Mapping[str, str] | None) -> None:
        line = shell_line(argv, env)
        if self.dry_run:
            print(line, file=self.out, flush=True)
        else:
            print(f"+ {line}", file=sys.stderr, flush=True)

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, check: bool = True
    ) -> int:
        """Runs `argv` with its output streamed; raises LaunchError on failure if `check`."""
        self._echo(argv, env)
        if self.dry_run:
            return 0
        try:
            code = subprocess.call(list(argv), env={**os.environ, **(env or {})})
        except FileNotFoundError as err:
            raise LaunchError(f"{argv[0]!r} is not installed or not on PATH.") from err
        if check and code != 0:
            raise LaunchError(f"this command failed with exit code {code}: {shell_line(argv, env)}")
        return code

    def capture(self, argv: Sequence[str], dry_value: str = "") -> tuple[int, str]:
        """Runs `argv` and returns (exit code, stdout); a dry run returns (0, dry_value)."""
        self._echo(argv, None)
        if self.dry_run:
            return 0, dry_value
        try:
            done = subprocess.run(list(argv), capture_output=True, text=True)
        except FileNotFoundError as err:
            raise LaunchError(f"{argv[0]!r} is not installed or not on PATH.") from err
        return done.returncode, done.stdout


def split_env(pairs: Sequence[str]) -> dict[str, str]:
    """["K=V", ...] -> {"K": "V"}; a pair without "=" is a user error."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise LaunchError(f"--env {pair!r} must look like NAME=VALUE.")
        env[key] = value
    return env
