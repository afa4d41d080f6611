"""`imagefolder`: the user's own images, one folder per class (`--data-dir PATH`).

A folder with `train/` and `test/` (and optionally `val/`) keeps that split; otherwise 20% is
held out as test and 10% of the rest as validation, stratified and seeded.
"""

from spaces.vision import image_study

STUDY = image_study(
    "imagefolder", dataset="imagefolder", epochs=15, trials=50, resolution=None,
    data_dir=None,  # no default: the user's folder is required
    description="your images, one folder per class (--data-dir PATH), torchvision backbone",
)
