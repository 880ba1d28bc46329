"""Label vocabularies: NIH ChestX-ray14 findings (NIH spelling) plus ``No Finding``."""

import difflib

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


#: manifest columns that may hold each image's requested labels as one "A|B" (or "A,B") string
LABEL_LIST_COLUMNS = ("labels", "requested_labels", "conditioning_labels")
#: manifest columns that are not labels (what ``cxrbench sample`` writes besides them; a paired reconstruction's
#: ``source``)
MANIFEST_METADATA = ("path", "source", "seed", "prompt", "patient_id", "split")


def unknown_label(where: str, name: str) -> str:
    """``where 'name': not a label name`` with the nearest valid name and all of them."""
    near = difflib.get_close_matches(name.strip().lower(), [lab.lower() for lab in LABELS], n=1, cutoff=0.6)
    hint = f"did you mean {next(lab for lab in LABELS if lab.lower() == near[0])!r}? " if near else ""
    return (f"{where} {name!r}: not a label name; {hint}labels are the NIH ChestX-ray14 findings and No Finding: "
            f"{', '.join(LABELS)}")
