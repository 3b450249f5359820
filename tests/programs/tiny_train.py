"""A small CUDA training script in the usual style: model.cuda(), batches .to("cuda"),
checkpoint saved and reloaded, training resumed. Prints one loss per line."""
import os
import sys

import torch
import torch.nn as nn

workdir = sys.argv[1]
torch.manual_seed(0)
torch.cuda.manual_seed_all(0)
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
assert torch.cuda.is_available(), "this script takes its CUDA path"

model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.1), nn.Linear(32, 1)).cuda()
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
data = torch.randn(256, 8)
target = data.sum(dim=1, keepdim=True)


def run(steps):
    for step in range(steps):
        idx = torch.arange(step * 32, step * 32 + 32) % 256
        x, y = data[idx].to("cuda", non_blocking=True), target[idx].to(device)
        loss = nn.functional.mse_loss(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"{loss.item():.6f}")


run(10)
path = os.path.join(workdir, "ckpt.pt")
torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, path)
state = torch.load(path)
model.load_state_dict(state["model"])
optimizer.load_state_dict(state["optim"])
run(10)
