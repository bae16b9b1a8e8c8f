"""The two classes: which `data.classes` key is which label, and their names in figures and files."""

#: Label of each key of `data.classes`: crack is the positive class.
CLASS_LABELS = {"negative": 0, "positive": 1}
#: Display name of each label, in label order (also the order of exported probabilities).
CLASS_NAMES = ("no crack", "crack")
