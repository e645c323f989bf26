"""Class vocabularies of the label schemes the bundle supports.

The order of each list is the order of the network's output channels. The bundle's classes are those of
``bundle/configs/common.json`` (``classes``); :data:`NIH14_CLASSES` and ``metadata.json``'s outputs are held to
it by ``tests/test_bundle.py`` (this module ships in the deployable bundle, where common.json does not).
"""

NO_FINDING = "No Finding"

#: NIH ChestX-ray14 scheme used by the paper: 13 diseases (Consolidation removed) + No Finding.
NIH14_CLASSES = [
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    NO_FINDING,
]

#: CheXpert scheme used by the paper: 7 diseases + No Finding.
CHEXPERT8_CLASSES = [
    "Cardiomegaly",
    "Edema",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Effusion",
    "Fracture",
    NO_FINDING,
]

SCHEMES = {"nih14": NIH14_CLASSES, "chexpert8": CHEXPERT8_CLASSES}


def disease_indices(classes):
    """Indices of the disease classes, i.e. every class except ``No Finding``.

    Args:
        classes: ordered class names.

    Returns:
        list of int, the positions of the diseases in ``classes``.
    """
    return [i for i, name in enumerate(classes) if name != NO_FINDING]
