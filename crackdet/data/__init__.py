"""Data: folder scanning, splits, transforms, the DataModule and data set download."""
