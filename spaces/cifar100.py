"""`cifar100`: as cifar10, on CIFAR-100's hundred classes (fewer images per class)."""

from spaces.vision import image_study

STUDY = image_study(
    "cifar100", dataset="cifar100",
    epochs=20,
    trials=60,
    resolution=None,
    description="CIFAR-100 (100 classes, 45k train / 5k val / 10k test), torchvision backbone",
)
