"""The one exception type for a user's mistake: a bad file, path or value, named in the message."""


class InputError(Exception):
    """A user-supplied file, path or value is wrong.

    The message is one line that names the file (and line, layer or key) and the problem. The CLI
    prints it without a traceback and exits non-zero; anything else that escapes is a bug.
    """


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch and step.

    Raised rather than exiting, so that a search trial fails cleanly and the search goes on.
    """
