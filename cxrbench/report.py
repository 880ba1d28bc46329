"""Moved to ``cxrbench.publish.report``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .publish import report as _module

sys.modules[__name__] = _module
