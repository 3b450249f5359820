"""A small CUDA training script, written for an NVIDIA GPU and left unmodified.

With torchdevice installed it runs on Apple Silicon (MPS) or the CPU.
The checkpoint goes to ``--out DIR`` if given, else to a temporary directory
that is removed at the end.
"""
import argparse
import os
import tempfile

import torch
import torch.nn as nn

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", metavar="DIR", help="directory for the checkpoint (default: a temporary one)")
options = parser.parse_args()

assert torch.cuda.is_available(), "this script needs a CUDA GPU"
device = torch.device("cuda")
torch.manual_seed(0)

model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 2)).cuda()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
x = torch.randn(512, 20, device="cuda")
y = (x[:, 0] + x[:, 1] > 0).long().to(device)

for step in range(200):
    loss = nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    if step % 50 == 0:
        print(f"step {step:3d}  loss {loss.item():.4f}")

with tempfile.TemporaryDirectory() as scratch:
    out = options.out or scratch
    os.makedirs(out, exist_ok=True)
    checkpoint = os.path.join(out, "train_cuda_checkpoint.pt")
    torch.save(model.state_dict(), checkpoint)
    model.load_state_dict(torch.load(checkpoint))
accuracy = (model(x).argmax(1) == y).float().mean().item()
print(f"accuracy {accuracy:.3f}  tensors on {x.device}")
