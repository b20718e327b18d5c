"""Errors raised while a session runs (kept apart so every layer can raise them without import cycles)."""


class SessionError(RuntimeError):
    """Misuse of a session (a second session on one model, an unsupported generation mode...)."""
