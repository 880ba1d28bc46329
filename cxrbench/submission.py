"""Moved to ``cxrbench.publish.submission``; this name stays importable (the same module object, so private names and
monkeypatching reach the real one)."""

import sys

from .publish import submission as _module

sys.modules[__name__] = _module
