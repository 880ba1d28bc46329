"""Label vocabularies: NIH ChestX-ray14 findings (NIH spelling) plus ``No Finding``."""

NIH14 = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
]
NO_FINDING = "No Finding"
LABELS = NIH14 + [NO_FINDING]

# Common alternative spellings found in CheXpert / torchxrayvision / prompts -> NIH spelling.
ALIASES = {
    "pleural thickening": "Pleural_Thickening",
    "pleural_thickening": "Pleural_Thickening",
    "pleural effusion": "Effusion",
    "no finding": NO_FINDING,
    "normal": NO_FINDING,
}


def canonical_label(name: str) -> str | None:
    """NIH spelling of a label name, or None when it is not a known label."""
    key = name.strip()
    for lab in LABELS:
        if lab.lower() == key.lower():
            return lab
    return ALIASES.get(key.lower())
