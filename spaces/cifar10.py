"""`cifar10`: an ImageNet-pretrained ResNet-18 (by default) fine-tuned on CIFAR-10.

The command the product is named for: `python -m search.run --study cifar10` on a GPU.
"""

from spaces.vision import image_study

STUDY = image_study(
    "cifar10", dataset="cifar10",
    epochs=15,  # per trial: about 30 s at 32x32 on one H100, a few minutes at 224x224
    trials=60,
    resolution=None,  # searched: 32 to 224, upsampled on the device
    description="CIFAR-10 (10 classes, 45k train / 5k val / 10k test), torchvision backbone",
)
