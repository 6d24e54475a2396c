"""Library start-up noise kept out of the console.

The gemma library imports TensorFlow (through kauldron) and grain, whose native code prints
C++/absl lines on the process's stderr when they load ("oneDNN custom operations are on",
"Could not find cuda drivers", "Grain multiprocess worker profiling requires ..."). Those
libraries are loaded here once, early, with file descriptor 2 sent to a log file, so the user's
console shows paritybench's own information. `PARITYBENCH_VERBOSE=1` (the CLI's `--verbose`)
leaves stderr alone; `PARITYBENCH_LIBRARY_LOG` names the log file.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

NOISY_LIBRARIES = ("tensorflow", "grain")
_done = False


def library_log() -> Path:
    """Where library start-up output goes (default: the paritybench cache's logs folder)."""
    if os.environ.get("PARITYBENCH_LIBRARY_LOG"):
        return Path(os.environ["PARITYBENCH_LIBRARY_LOG"])
    cache = Path(os.environ.get("PARITYBENCH_CACHE", Path.home() / ".cache" / "paritybench"))
    return cache / "logs" / "libraries.log"


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
