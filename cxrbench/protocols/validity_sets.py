"""Where each protocol's validity sets come from (``cxrbench validate --protocol``): the NIH folder, its
patient-disjoint splits (held-out images build the sets, the reference split is what they are scored
against) and the image size."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..engine.validity import ProtocolData
from . import cxr64_splits, cxr128_splits


def _cxr128_table(data_root: Path) -> pd.DataFrame:
    table = cxr128_splits.nih_splits(data_root)
    return table.assign(_split=table["cxr128_split"])


def _cxr64_table(data_root: Path) -> pd.DataFrame:
    table = pd.read_csv(Path(data_root) / "nih1000_64px" / "labels.csv")
    return table.assign(_split=cxr64_splits.image_splits(table))


PROTOCOL_DATA = {
    "cxr128": ProtocolData("cxr128", "nih_extra_256px", 128, _cxr128_table),
    "cxr64": ProtocolData("cxr64", "nih1000_64px", 64, _cxr64_table),
}
