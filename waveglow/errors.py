"""Errors that mean "the user gave us something we cannot use".

CLIs print these as one line (`error: <message>`) and exit non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad input from the user: a path, a file's contents, a config value.

    The message must name the file (or setting) and say what was expected.
    """


def naming(path: object, error: Exception) -> UserError:
    """`error` as a UserError whose message starts with `path` (unless it already names it)."""
    message = str(error)
    return UserError(message if str(path) in message else f"{path}: {message}")
