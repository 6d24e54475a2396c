"""Errors a user can act on. Each message is one line naming the thing and what to do.

The CLI prints these as `error: <message>` without a traceback (exit code 2); anything else is a
bug and keeps its traceback.
"""


class ParitybenchError(Exception):
    """Base class: a clear, one-line, actionable error."""


class InputError(ParitybenchError, ValueError):
    """Bad user input: a file, field, name or URL that cannot be used."""


class ModelError(ParitybenchError):
    """A model, checkpoint or tokenizer that cannot be loaded or does not fit together."""


class UnsupportedError(ParitybenchError):
    """A request the backend cannot take for this model (a modality, an option)."""


class BackendGone(ModelError):
    """The backend's server process is gone (killed, out of memory): nothing more can be measured
    on it, so a run stops instead of recording every remaining prompt as failed."""
