"""`mnist` and `fashion_mnist`: grey 28x28 images, made three-channel for ImageNet backbones.

Both are easy enough that resolution is not worth searching: they run at 32x32.
"""

from spaces.vision import image_study

MNIST = image_study(
    "mnist", dataset="mnist", epochs=5, trials=30, resolution=32,
    description="MNIST digits (54k train / 6k val / 10k test), torchvision backbone",
)

FASHION_MNIST = image_study(
    "fashion_mnist", dataset="fashion_mnist", epochs=10, trials=40, resolution=32,
    description="Fashion-MNIST (54k train / 6k val / 10k test), torchvision backbone",
)
