"""The one exception family that qpack raises; the CLI turns it into one line and an exit code."""

from __future__ import annotations


class QpackError(Exception):
    """Base class for every error qpack reports to a user."""


class FormatError(QpackError):
    """A file is not what it claims to be: truncated, corrupt, hostile or of an unknown kind."""


class UnsupportedError(QpackError):
    """The input is well formed but uses something qpack does not handle (an op, a dtype)."""


class OptionError(QpackError):
    """The options asked for something impossible (e.g. 1-bit symmetric)."""


class BudgetError(QpackError):
    """An artifact broke a size or quality budget set for a build (exits with its own code)."""


def brief(value: object, limit: int = 60) -> str:
    """A bounded, flat rendering of an untrusted value for an error message.

    Containers are named, not rendered: a hostile file's nesting never reaches repr().
    """
    text = repr(value) if isinstance(value, (bool, int, float, str, bytes, type(None))) else f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown(name: str, limit: int = 200) -> str:
    """An untrusted name (a tensor's, say) as it goes into a one-line message: bounded, with line
    breaks, control and invisible characters escaped as Python writes them in a string literal."""
    text = repr(name[:limit])[1:-1]
    return text + "..." if len(name) > limit else text
