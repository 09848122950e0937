"""How the `bertgpt` command ends when something goes wrong: the exit status, one sentence, and
nothing else on the terminal.

    0    success
    1    a runtime fault: the non-finite stop (train.nan_policy=stop), a full disk, an I/O error
         while running, or an unexpected error (which alone keeps its traceback: it is a bug)
    2    a mistake the user can fix: config, data, paths, checkpoints (`ConfigError` and its
         subclasses, a missing file), and argparse's usage errors
    130  interrupted (Ctrl-C outside training, which saves and exits 0 by itself)

Anticipated conditions print `bertgpt COMMAND: error: SENTENCE` as the last line on stderr and
no traceback. Third-party noise on paths known to be harmless is silenced here: asyncio's
"Event loop is closed" from TensorStore/Orbax event loops collected after their loop (raised
or logged), Orbax's logged traceback of an async save that met a full or read-only disk, and
multi-line warnings, which print as one line each. Orbax's "Given directory is
read only" is dropped where read-only managers are opened (pretrained/workdir.py).
"""

from __future__ import annotations

import argparse
import errno
import logging
import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any

from bertgpt_jax.core import fs
from bertgpt_jax.core.errors import ConfigError, NonFiniteError

EXIT_FAULT, EXIT_MISTAKE, EXIT_INTERRUPTED = 1, 2, 130
_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)


def _os_sentence(err: OSError) -> str:
    where = f" {err.filename}" if err.filename else ""
    if err.errno in _FULL:
        return (
            f"the disk is full (writing{where}); free space or use another --workdir, then run "
            "the same command again: training resumes from the newest committed checkpoint."
        )
    if err.errno in _READ_ONLY:
        return (
            f"cannot write{where} ({err.strerror}); choose a directory on a writable file system."
        )
    return f"{err.strerror or err}{where}."


def drop_event_loop_noise(unraisable: Any) -> None:
    """sys.unraisablehook that drops 'Event loop is closed' from event loops of Orbax and
    TensorStore finalised after their loop (harmless, and hundreds of lines on a fall-back)."""
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and "Event loop is closed" in str(value):
        return
    sys.__unraisablehook__(unraisable)


def _drop_thread_event_loop_noise(args: Any) -> None:
    """threading.excepthook: the same noise raised in a TensorStore/Orbax callback thread."""
    if isinstance(args.exc_value, RuntimeError) and "Event loop is closed" in str(args.exc_value):
        return
    threading.__excepthook__(args)


class _ClosedLoopFilter(logging.Filter):
    """The same noise when asyncio logs it ("Task exception was never retrieved", "Exception
    in callback") instead of raising it; and the other reads of a damaged checkpoint, which
    TensorStore leaves unretrieved once the first one failed (that one is reported, with the
    fall-back, as one warning)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        text = f"{record.getMessage()} {error}"
        unread = "exception was never retrieved" in text and "Error reading" in text
        return "Event loop is closed" not in text and not unread


logging.getLogger("asyncio").addFilter(_ClosedLoopFilter())


class _DiskErrorFilter(logging.Filter):
    """Orbax logs a failed async save with its traceback before re-raising it to the caller; a
    full or read-only disk is then reported in one sentence (`run`), so its log is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return error is None or fs.disk_error(error, "") is None


logging.getLogger("absl").addFilter(_DiskErrorFilter())


def _one_line_warning(message: Any, category: type, *_: Any, **__: Any) -> None:
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace, handler: Callable[[argparse.Namespace], int]) -> int:
    """`handler(args)` with the exit statuses and sentences above."""
    command = f"bertgpt {args.command}"
    # Kept for the rest of the process: the noise also comes when the loops are collected at
    # interpreter exit, after the command's sentence (seen under load as a stray traceback).
    sys.unraisablehook = drop_event_loop_noise
    threading.excepthook = _drop_thread_event_loop_noise
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            return int(handler(args))
        except (ConfigError, FileNotFoundError) as err:
            sentence, status = str(err), EXIT_MISTAKE
        except NonFiniteError as err:
            sentence, status = str(err), EXIT_FAULT
        except OSError as err:
            sentence, status = _os_sentence(err), EXIT_FAULT
        except KeyboardInterrupt:
            sentence, status = "interrupted.", EXIT_INTERRUPTED
    print(f"{command}: error: {' '.join(sentence.split())}", file=sys.stderr, flush=True)
    return status
