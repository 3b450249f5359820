"""
Fine-tune from a checkpoint that was written on a GPU server (every tensor in it,
optimizer state included, was saved from CUDA memory), then evaluate:

    python resume_gpu_checkpoint.py checkpoint.pth.tar --gpu 0

Loads it twice, the two ways published code usually does: plainly, and with
map_location="cuda:<gpu>" as the PyTorch ImageNet example does.
"""
import argparse

import torch
import torch.nn as nn
import torch.nn.functional as F


class TinyResNet(nn.Module):
    def __init__(self, channels=8, classes=5):
        super().__init__()
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.stem(x)))
        x = F.relu(x + self.bn2(self.conv(x)))
        return self.head(x.mean((2, 3)))


def batches(n_batches, batch=16, seed=123):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n_batches):
        x = torch.randn(batch, 1, 8, 8, generator=g)
        yield x, (x.mean((1, 2, 3)) * 10).long().clamp(-2, 2) + 2


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("resume")
    parser.add_argument("--gpu", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()

    model = TinyResNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    # 1. as many scripts do: no map_location at all
    checkpoint = torch.load(args.resume)
    print(f"=> loaded checkpoint '{args.resume}' (epoch {checkpoint['epoch']}, arch {checkpoint['arch']})")
    print(f"checkpoint tensors on {checkpoint['state_dict']['head.weight'].device.type}")
    model.load_state_dict(checkpoint["state_dict"])

    # 2. as the PyTorch ImageNet example does
    loc = f"cuda:{args.gpu}"
    checkpoint = torch.load(args.resume, map_location=loc)
    start_epoch = checkpoint["epoch"]
    best_acc1 = checkpoint["best_acc1"]
    best_acc1 = best_acc1.to(args.gpu)
    model.cuda(args.gpu)
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    momentum = optimizer.state[optimizer.param_groups[0]["params"][0]]["momentum_buffer"]
    print(f"optimizer state restored: momentum buffer norm {momentum.norm().item():.6f}")
    print(f"best acc1 so far {best_acc1.item():.3f}")

    criterion = nn.CrossEntropyLoss().cuda(args.gpu)
    model.train()
    for step, (x, y) in enumerate(batches(args.steps)):
        x, y = x.cuda(args.gpu, non_blocking=True), y.cuda(args.gpu, non_blocking=True)
        loss = criterion(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        print(f"epoch {start_epoch} step {step} loss {loss.item():.6f}")

    model.eval()
    with torch.no_grad():
        x, y = next(batches(1, batch=64, seed=7))
        logits = model(x.cuda(args.gpu))
        acc1 = (logits.argmax(1) == y.cuda(args.gpu)).float().mean() * 100
    print(f"eval acc1 {acc1.item():.3f} logits checksum {logits.double().sum().item():.6f}")
    is_best = acc1 > best_acc1
    print(f"is_best {bool(is_best)}")


if __name__ == "__main__":
    main()
