"""Lightning configured for one NVIDIA GPU, as its documentation shows.

    python lightning_train.py ACCELERATOR DEVICES PRECISION [STRATEGY]

e.g. ``gpu 1 16-mixed``, ``cuda auto 32-true``, ``gpu 2 16-mixed ddp``. Prints
one ``RESULT {...}`` line (per rank) with what Lightning chose and the losses.
"""
import json
import sys

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset


class Regressor(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
        self.seen = {}
        self.epoch_losses = []
        self._losses = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        out = self.net(x)
        self.seen.setdefault("forward_dtype", str(out.dtype).replace("torch.", ""))
        self.seen.setdefault("module_device", str(self.device))
        self.seen.setdefault("batch_device_type", x.device.type)
        loss = torch.nn.functional.mse_loss(out.float(), y)
        self._losses.append(loss.item())
        return loss

    def on_train_epoch_end(self):
        self.epoch_losses.append(sum(self._losses) / len(self._losses))
        self._losses = []

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main():
    accelerator, devices, precision = sys.argv[1:4]
    strategy = sys.argv[4] if len(sys.argv) > 4 else "auto"
    devices = int(devices) if devices.isdigit() else devices
    L.seed_everything(0, verbose=False)
    x = torch.randn(256, 16)
    y = (x[:, :4].sum(dim=1, keepdim=True) * 0.5)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, pin_memory=True)
    model = Regressor()
    trainer = L.Trainer(accelerator=accelerator, devices=devices, precision=precision, strategy=strategy,
                        max_epochs=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader)
    plugin = trainer.precision_plugin
    scaler = getattr(plugin, "scaler", None)
    result = {
        "accelerator": type(trainer.accelerator).__name__,
        "strategy": type(trainer.strategy).__name__,
        "root_device": str(trainer.strategy.root_device),
        "num_devices": trainer.num_devices,
        "world_size": trainer.world_size,
        "global_rank": trainer.global_rank,
        "precision_plugin": type(plugin).__name__,
        "amp_device": getattr(plugin, "device", None),
        "scaler": None if scaler is None else type(scaler).__name__,
        "scaler_enabled": None if scaler is None else scaler.is_enabled(),
        "process_group_backend": getattr(trainer.strategy, "_process_group_backend", None),
        "epoch_losses": model.epoch_losses,
        "param_sum": float(sum(p.detach().double().sum() for p in model.parameters())),
        **model.seen,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
