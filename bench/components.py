"""Data components for the GPU benchmarks: synthetic batches generated directly on the device,
so the benchmark measures training steps, not host-to-device copies."""

import torch


class DeviceBatches:
    """``n_batches`` fixed random batches living on ``device``, re-iterated each epoch."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)


def images(batch_size=64, image_size=224, n_classes=1000, n_batches=4, device="cuda"):
    """``(x [B, 3, S, S] float32, y [B] int64)`` on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    return DeviceBatches(
        [
            (
                torch.randn(batch_size, 3, image_size, image_size, generator=g).to(device),
                torch.randint(0, n_classes, (batch_size,), generator=g).to(device),
            )
            for _ in range(n_batches)
        ]
    )


def tokens(batch_size=8, seq_len=512, vocab_size=32000, n_batches=4, device="cuda"):
    """``{"input_ids", "labels"}`` int64 ``[B, T]`` on ``device``."""
    g = torch.Generator(device="cpu").manual_seed(0)
    out = []
    for _ in range(n_batches):
        seq = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=g).to(device)
        out.append({"input_ids": seq[:, :-1].contiguous(), "labels": seq[:, 1:].contiguous()})
    return DeviceBatches(out)


def resnet50(num_classes=1000):
    """torchvision's ResNet-50 (needs torchvision; in-place ReLUs, BatchNorm)."""
    import torchvision

    return torchvision.models.resnet50(num_classes=num_classes)


def resnet18(num_classes=1000):
    """torchvision's ResNet-18 (needs torchvision)."""
    import torchvision

    return torchvision.models.resnet18(num_classes=num_classes)
