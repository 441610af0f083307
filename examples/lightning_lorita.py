"""LoRITa inside PyTorch Lightning: factorize, train with plain weight decay, merge, truncate.

A factorized model is an ordinary ``nn.Module``, so it drops into a ``LightningModule`` unchanged;
``lorita.param_groups`` gives the optimizer its weight-decay groups. Multi-GPU works the same way
(``Trainer(strategy="ddp", devices=N)``): merge on one process after ``fit``
(``if trainer.is_global_zero: ...``); with ``strategy="fsdp"`` gather the full weights first.

    python examples/lightning_lorita.py        # a few CPU steps on random data
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import lorita


def plain_model() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 4))


class LitLoRITa(L.LightningModule):
    """Wraps any (factorized) classifier; SGD with LoRITa's weight-decay groups."""

    def __init__(self, model: nn.Module, lr: float = 0.05, weight_decay: float = 1e-3) -> None:
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return torch.optim.SGD(lorita.param_groups(self.model, self.weight_decay), lr=self.lr, momentum=0.9)


def run(steps: int = 5, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Train ``steps`` batches; returns ``(factorized model, merged plain model)``."""
    L.seed_everything(seed, verbose=False)
    factorized = lorita.factorize(plain_model(), depth=3)
    g = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.randn(64, 1, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g))
    trainer = L.Trainer(
        max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    lit = LitLoRITa(factorized)
    trainer.fit(lit, DataLoader(data, batch_size=16, shuffle=True))
    merged = lorita.merge(lit.model).eval()  # plain nn.Linear layers, the original architecture
    return lit.model.eval(), merged


if __name__ == "__main__":
    fact, dense = run()
    ranks = lorita.select_ranks(dense, lorita.EnergyThreshold(0.9))
    print("ranks at 90% energy:", ranks)
    print(lorita.count_macs(lorita.to_low_rank(dense, ranks), torch.zeros(1, 1, 8, 8)).table())
