"""
A reproducible experiment: every source of randomness seeded, cuDNN and cuBLAS
in deterministic mode, the CUDA RNG state checkpointed and restored.

    python deterministic.py --seed 3

Two runs with the same seed print exactly the same lines.
"""
import argparse
import os
import random

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8 * 16, 2)

    def forward(self, x):
        return self.fc(self.drop(F.gelu(self.conv(x))).flatten(1))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    seed_everything(args.seed)
    device = torch.device("cuda:0")

    model = Net().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(64, 4, 16, device=device)
    y = torch.randint(0, 2, (64,), device=device)
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(args.seed)

    for step in range(args.steps):
        jitter = np.random.uniform(0.9, 1.1)           # numpy augmentation
        k = random.randint(8, 32)                      # python RNG: batch size
        idx = torch.randperm(64, device=device, generator=shuffle)[:k]
        noise = torch.randn_like(x[idx]) * 0.05        # CUDA default generator
        loss = F.cross_entropy(model(x[idx] * jitter + noise), y[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"step {step} batch {k} loss {loss.item():.8f}")

    # Checkpoint the CUDA RNG state, draw, restore, draw again: same numbers.
    state = torch.cuda.get_rng_state()
    first = torch.rand(4, device=device)
    torch.cuda.set_rng_state(state)
    again = torch.rand(4, device=device)
    print(f"rng state restored: {torch.equal(first, again)}")
    all_states = torch.cuda.get_rng_state_all()
    print(f"rng states saved for {len(all_states)} device(s)")
    print(f"initial seed {torch.cuda.initial_seed()}")
    print("sample " + " ".join(f"{v:.6f}" for v in first.tolist()))
    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    print(f"weights checksum {checksum:.10f}")


if __name__ == "__main__":
    main()
