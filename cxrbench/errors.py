"""User-facing errors.

Anything a user can fix (a bad path, a bad image, a wrong flag) raises a subclass of ``CxrbenchError``;
the CLI prints its message on one line and exits non-zero without a traceback.
"""


class CxrbenchError(Exception):
    """A mistake the user can fix; the message names the file(s) and the fix."""

    exit_code = 1


class UsageError(CxrbenchError):
    """Wrong flags or arguments (exit code 2, like argparse)."""

    exit_code = 2


class DataError(CxrbenchError):
    """Images, labels or manifests that cannot be used as given."""


class WeightsError(CxrbenchError):
    """Pretrained weights that cannot be found or loaded."""
