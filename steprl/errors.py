"""The one error type of steprl's command lines (``steprl.main``, ``steprl.eval``).

A leaf module, so the training and evaluation entry points (and anything they call) raise the same
type without importing each other.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: reported as one line on stderr with exit code 2, before anything starts."""
