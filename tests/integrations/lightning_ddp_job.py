"""A two-rank Lightning DDP job (CPU, gloo) for test_lightning_ddp.py; run with torchrun.

Fits twice: with a default NotebookExpLogger (rank 0 logs), then with
all_ranks=True (every rank logs; other ranks as rank<N>/...). Rank 0 prints the
two run ids as ``RUNS <default> <all_ranks>``.
"""

import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from notebook_exp.integrations.lightning import NotebookExpLogger


class Tiny(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=True, on_epoch=False)
        self.log("rank_seen", float(self.global_rank), on_step=True, on_epoch=False)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(logger) -> None:
    gen = torch.Generator().manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(32, 4, generator=gen), torch.randn(32, 1, generator=gen)),
                      batch_size=4)
    trainer = Trainer(max_epochs=1, accelerator="cpu", devices=2, strategy="ddp", logger=logger,
                      enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                      log_every_n_steps=1)
    trainer.fit(Tiny(), data)


if __name__ == "__main__":
    default = NotebookExpLogger(name="ddp", run_name="rank0-only")
    fit(default)
    every = NotebookExpLogger(name="ddp", run_name="all-ranks", all_ranks=True)
    fit(every)
    if default.rank == 0:
        print("RUNS", default.version, every.version, flush=True)
