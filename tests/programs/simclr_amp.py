"""Contrastive (SimCLR-style) pre-training in mixed precision, as SimCLR/MoCo reproductions write it.

Two augmented views per sample, an encoder + projection head, ``F.normalize``,
the NT-Xent loss written out by hand with ``torch.exp(sim / temperature)`` and a
mask built with ``torch.eye(..., device=...)`` (many reproductions do this rather
than use cross_entropy), ``torch.autocast("cuda", dtype=torch.float16)`` +
``torch.amp.GradScaler("cuda")``, ``cudnn.benchmark``. On a GPU, CUDA autocast runs ``exp`` in float32, so
``exp(1 / 0.07)`` does not overflow.

    python simclr_amp.py               # float16 autocast
    python simclr_amp.py --no-fp16     # float32
"""
import argparse

import torch
import torch.backends.cudnn as cudnn
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser(description="SimCLR on synthetic data")
parser.add_argument("--temperature", default=0.07, type=float)
parser.add_argument("--batch_size", default=32, type=int)
parser.add_argument("--epochs", default=4, type=int)
parser.add_argument("--feature_dim", default=16, type=int)
parser.add_argument("--no-fp16", dest="fp16_precision", action="store_false")
parser.add_argument("--seed", default=0, type=int)


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(8, 32, generator=g) * 2
    labels = torch.randint(0, 8, (n,), generator=g)
    return centers[labels] + torch.randn(n, 32, generator=g), labels


def augment(x):
    """Random feature dropout + jitter + scaling (stands in for crops and colour jitter)."""
    keep = (torch.rand_like(x) > 0.2).float()
    return x * keep * (1 + 0.1 * torch.randn(x.size(0), 1, device=x.device)) + 0.1 * torch.randn_like(x)


class Model(nn.Module):
    def __init__(self, feature_dim=16):
        super(Model, self).__init__()
        self.f = nn.Sequential(nn.Linear(32, 64), nn.BatchNorm1d(64), nn.ReLU(inplace=True), nn.Linear(64, 64))
        # projection head
        self.g = nn.Sequential(nn.Linear(64, 64, bias=False), nn.BatchNorm1d(64), nn.ReLU(inplace=True),
                               nn.Linear(64, feature_dim, bias=True))

    def forward(self, x):
        feature = self.f(x)
        out = self.g(feature)
        return F.normalize(feature, dim=-1), F.normalize(out, dim=-1)


def nt_xent(out_1, out_2, temperature):
    batch_size = out_1.size(0)
    # [2*B, D]
    out = torch.cat([out_1, out_2], dim=0)
    # [2*B, 2*B]
    sim_matrix = torch.exp(torch.mm(out, out.t().contiguous()) / temperature)
    mask = (torch.ones_like(sim_matrix) - torch.eye(2 * batch_size, device=sim_matrix.device)).bool()
    # [2*B, 2*B-1]
    sim_matrix = sim_matrix.masked_select(mask).view(2 * batch_size, -1)
    # compute loss
    pos_sim = torch.exp(torch.sum(out_1 * out_2, dim=-1) / temperature)
    # [2*B]
    pos_sim = torch.cat([pos_sim, pos_sim], dim=0)
    return (-torch.log(pos_sim / sim_matrix.sum(dim=-1))).mean()


def main():
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cudnn.benchmark = True
    device = torch.device("cuda")
    x_train, y_train = make_data(512, 0)
    x_train, y_train = x_train.to(device), y_train.to(device)

    model = Model(args.feature_dim).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-6)
    scaler = torch.amp.GradScaler("cuda", enabled=args.fp16_precision)

    for epoch in range(1, args.epochs + 1):
        model.train()
        total_loss, total_num = 0.0, 0
        perm = torch.randperm(len(x_train), device=device)
        for i in range(0, len(x_train), args.batch_size):
            x = x_train[perm[i:i + args.batch_size]]
            with torch.autocast("cuda", dtype=torch.float16, enabled=args.fp16_precision):
                _, out_1 = model(augment(x))
                _, out_2 = model(augment(x))
                loss = nt_xent(out_1, out_2, args.temperature)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total_num += x.size(0)
            total_loss += loss.item() * x.size(0)
        print(f"Train Epoch: [{epoch}/{args.epochs}] Loss: {total_loss / total_num:.4f} "
              f"scale: {scaler.get_scale():.1f}")


if __name__ == "__main__":
    main()
