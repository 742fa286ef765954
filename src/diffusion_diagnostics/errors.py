"""The one exception type the workflow turns into a single error line for the user."""


class DiagnosticsError(Exception):
    """Bad input or a fault the user can act on; the message says what was wrong and what to do."""


def first_line(error: Exception) -> str:
    """An exception's first message line: torch's weights_only refusals run to many lines."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
