"""The one exception type the workflow turns into a single error line for the user."""


class DiagnosticsError(Exception):
    """Bad input or a fault the user can act on; the message says what was wrong and what to do."""
