"""accelerate ``Accelerator(mixed_precision="fp16")`` with prepare, backward and
save_state/load_state, as its documentation shows for a GPU user.

    python accelerate_train.py fp16|bf16|no
"""
import json
import sys
import tempfile

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch.utils.data import DataLoader, TensorDataset


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "fp16"
    accelerator = Accelerator(mixed_precision=mode)
    set_seed(0)
    x = torch.randn(512, 16)
    y = x[:, :4].sum(dim=1, keepdim=True) * 0.5
    loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    seen = {}

    def record(module, inputs, output):  # inside the model: accelerate casts its outputs back to float32
        seen.setdefault("layer_dtype", str(output.dtype).replace("torch.", ""))

    model[0].register_forward_hook(record)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    epoch_losses = []
    for epoch in range(8):
        total = 0.0
        for xb, yb in loader:
            out = model(xb)
            seen.setdefault("batch_device_type", xb.device.type)
            loss = torch.nn.functional.mse_loss(out.float(), yb)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad()
            total += loss.item()
        epoch_losses.append(total / len(loader))

    state_dir = tempfile.mkdtemp(prefix="acc-state-")
    accelerator.save_state(state_dir)
    saved = [p.detach().clone() for p in model.parameters()]
    saved_scale = accelerator.scaler.get_scale() if accelerator.scaler is not None else None
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    if accelerator.scaler is not None:
        accelerator.scaler.update(new_scale=3.0)
    accelerator.load_state(state_dir)
    restored = all(torch.equal(a, b.detach()) for a, b in zip(saved, model.parameters()))
    scaler = accelerator.scaler
    result = {
        "device": str(accelerator.device),
        "distributed_type": str(accelerator.distributed_type),
        "mixed_precision": accelerator.mixed_precision,
        "native_amp": accelerator.native_amp,
        "scaler": None if scaler is None else type(scaler).__name__,
        "scaler_enabled": None if scaler is None else scaler.is_enabled(),
        "scale_saved": saved_scale,
        "scale_restored": None if scaler is None else scaler.get_scale(),
        "params_restored": restored,
        "epoch_losses": epoch_losses,
        **seen,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
