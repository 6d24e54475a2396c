"""Library start-up noise kept out of the console.

The gemma library imports TensorFlow (through kauldron) and grain, whose native code prints
C++/absl lines on the process's stderr when they load ("oneDNN custom operations are on",
"Could not find cuda drivers", "Grain multiprocess worker profiling requires ..."). Those
libraries are loaded here once, early, with file descriptor 2 sent to a log file, so the user's
console shows paritybench's own information. The Python loggers of those libraries (absl's, which
Orbax writes to: "Skipping merge of OCDBT checkpoints") write to the same file. `PARITYBENCH_VERBOSE=1`
(the CLI's `--verbose`) leaves stderr and the loggers alone; `PARITYBENCH_LIBRARY_LOG` names the log
file (the CLI puts it in the output folder of a command that has one).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path

NOISY_LIBRARIES = ("tensorflow", "grain")
NOISY_LOGGERS = ("absl",)  # Python loggers of those libraries and of Orbax
_done = False
_run_log: Path | None = None  # the output folder's log of the command running (log_into)
_handler: logging.Handler | None = None


def library_log() -> Path:
    """Where library output goes: $PARITYBENCH_LIBRARY_LOG, else the running command's output
    folder (`log_into`), else the paritybench cache's logs folder."""
    if os.environ.get("PARITYBENCH_LIBRARY_LOG"):
        return Path(os.environ["PARITYBENCH_LIBRARY_LOG"])
    if _run_log is not None:
        return _run_log
    cache = Path(os.environ.get("PARITYBENCH_CACHE", Path.home() / ".cache" / "paritybench"))
    return cache / "logs" / "libraries.log"


def log_into(folder: Path) -> Path:
    """Keep library output in `folder`/libraries.log from now on (a run's output folder, beside its
    results); returns the log's path."""
    global _run_log
    _run_log = folder / "libraries.log"
    if _handler is not None:  # the libraries are loaded: their loggers follow
        _log_python_loggers()
    return library_log()


def _log_python_loggers() -> None:
    global _handler
    log = library_log()
    log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(levelname)s:%(name)s:%(message)s"))
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if _handler is not None:
            logger.removeHandler(_handler)
        logger.addHandler(handler)
        logger.propagate = False  # not to the console's handlers
    if _handler is not None:
        _handler.close()
    _handler = handler


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """File descriptor 2 (native code's and Python's stderr) appended to `path` inside the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def load_noisy_libraries() -> None:
    """Import TensorFlow and grain once with their start-up output in `library_log()` (unless
    PARITYBENCH_VERBOSE=1); a library that is not installed is skipped."""
    global _done
    if _done:
        return
    _done = True
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if os.environ.get("PARITYBENCH_VERBOSE") == "1":
        return
    with stderr_to(library_log()):
        for name in NOISY_LIBRARIES:
            with contextlib.suppress(ImportError):  # not installed: nothing to quiet
                importlib.import_module(name)
    _log_python_loggers()
