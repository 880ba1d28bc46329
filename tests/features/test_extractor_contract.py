"""Every registered feature extractor against ``ExtractorTesterMixin`` (a new one is tested without edits here)."""

from __future__ import annotations

import pytest

from cxrbench.registry import EXTRACTORS
from tests.extractor_contract import ExtractorTesterMixin

# seconds to build and run on 2 CPU cores (BatchNorm calibration, 224-299 px networks): opt in with -m slow
SLOW = {"inception", "xrv", "xrv-classifier", "moco"}

for _name in EXTRACTORS.names():
    _cls = type(f"TestExtractor_{_name.replace('-', '_')}", (ExtractorTesterMixin,), {"name": _name})
    globals()[_cls.__name__] = pytest.mark.slow(_cls) if _name in SLOW else _cls
