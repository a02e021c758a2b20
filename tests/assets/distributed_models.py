"""Data and models for the distributed tests (loaded by file path from recipes)."""

import torch

from tests.assets.train_models import Tiny, fixed_data


def nan_at_index(batch_size: int = 8, n: int = 64, bad_index: int = 41):
    """``fixed_data`` (unshuffled) whose sample ``bad_index`` has NaN inputs. With two ranks
    and a DistributedSampler, odd indices go to rank 1: only rank 1 sees the NaN."""
    loader = fixed_data(batch_size=batch_size, n=n)
    x, y = loader.dataset.tensors
    x = x.clone()
    x[bad_index] = float("nan")
    ds = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False)


class RaiseOnRank(Tiny):
    """Tiny whose forward raises ``RuntimeError`` on rank ``rank`` at forward call ``at``."""

    def __init__(self, rank: int = 1, at: int = 3):
        super().__init__()
        self.rank, self.at, self.calls = rank, at, 0

    def forward(self, x):
        self.calls += 1
        if torch.distributed.get_rank() == self.rank and self.calls == self.at:
            raise RuntimeError(f"injected failure on rank {self.rank}")
        return super().forward(x)
