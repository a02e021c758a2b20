"""torchvision's ResNet-18 and MobileNetV3-small for the real-architecture false-alarm suite
(``tests/diagnose/test_real_architectures.py``), randomly initialised (no downloads), with
the images of ``hf_models.tinted_images`` as ``(images, labels)`` batches.

Needs torchvision built for the installed torch; on the CPU build of torch 2.13 the PyPI
torchvision fails to import ("operator torchvision::nms does not exist"), and the tests skip.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def resnet18(num_classes: int = 3) -> torch.nn.Module:
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)


def mobilenet(num_classes: int = 3) -> torch.nn.Module:
    import torchvision

    return torchvision.models.mobilenet_v3_small(num_classes=num_classes)


def tinted_image_pairs(
    batch_size: int = 16, image_size: int = 32, n_samples: int = 512, seed: int = 0
) -> DataLoader:
    """Noise images with one of 3 channels brightened; the label is that channel.

    Returns:
        DataLoader: ``(images float32 [B, 3, H, W], labels int64 [B])``.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n_samples,), generator=g)
    images = torch.randn(n_samples, 3, image_size, image_size, generator=g)
    images[torch.arange(n_samples), labels] += 1.0
    return DataLoader(
        TensorDataset(images, labels), batch_size=batch_size, shuffle=True, drop_last=True
    )
