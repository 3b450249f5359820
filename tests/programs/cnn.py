"""
Image classification with a small CNN, in the style of the PyTorch ImageNet example:
model.cuda(), cudnn.benchmark, a DataLoader with worker processes and pinned memory,
non_blocking copies to the GPU, a step LR schedule, and a validation pass per epoch.

The data set is synthetic (shapes drawn into 3x16x16 images), so the script runs
anywhere without downloads:

    python cnn.py --epochs 3 --workers 2 --mp-context spawn
"""
import argparse
import time

import torch
import torch.backends.cudnn as cudnn
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser(description="Synthetic shapes training")
parser.add_argument("--epochs", default=3, type=int)
parser.add_argument("-b", "--batch-size", default=32, type=int)
parser.add_argument("--lr", default=0.1, type=float)
parser.add_argument("-j", "--workers", default=2, type=int)
parser.add_argument("--mp-context", default=None, choices=[None, "fork", "spawn", "forkserver"])
parser.add_argument("--gpu", default=0, type=int)
parser.add_argument("--seed", default=42, type=int)
parser.add_argument("--print-freq", default=4, type=int)


class Shapes(Dataset):
    """Four classes: horizontal bar, vertical bar, square, cross; noisy and randomly flipped."""

    def __init__(self, size, seed, train=True):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, 4, (size,), generator=g)
        self.offsets = torch.randint(2, 10, (size, 2), generator=g)
        self.noise = torch.randn(size, 3, 16, 16, generator=g) * 0.3
        self.train = train

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        img = self.noise[i].clone()
        r, c = self.offsets[i].tolist()
        label = int(self.labels[i])
        if label == 0:
            img[:, r, c - 2:c + 5] += 2.0
        elif label == 1:
            img[:, r - 2:r + 5, c] += 2.0
        elif label == 2:
            img[:, r - 2:r + 2, c - 2:c + 2] += 2.0
        else:
            img[:, r, c - 2:c + 3] += 2.0
            img[:, r - 2:r + 3, c] += 2.0
        if self.train and torch.rand(1).item() < 0.5:  # random horizontal flip, seeded per worker
            img = img.flip(-1)
        return img, label


class Net(nn.Module):
    def __init__(self, num_classes=4):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.relu(self.bn2(self.conv2(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


class AverageMeter:
    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, val, n=1):
        self.sum += val * n
        self.count += n

    @property
    def avg(self):
        return self.sum / max(self.count, 1)


def accuracy(output, target):
    with torch.no_grad():
        return (output.argmax(1) == target).float().mean().item() * 100.0


def train(loader, model, criterion, optimizer, epoch, args):
    losses, top1 = AverageMeter(), AverageMeter()
    model.train()
    for i, (images, target) in enumerate(loader):
        images = images.cuda(args.gpu, non_blocking=True)
        target = target.cuda(args.gpu, non_blocking=True)
        output = model(images)
        loss = criterion(output, target)
        losses.update(loss.item(), images.size(0))
        top1.update(accuracy(output, target), images.size(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i % args.print_freq == 0:
            print(f"Epoch: [{epoch}][{i}/{len(loader)}]\tLoss {loss.item():.4f}")
    return losses.avg, top1.avg


def validate(loader, model, criterion, args):
    losses, top1 = AverageMeter(), AverageMeter()
    model.eval()
    with torch.no_grad():
        for images, target in loader:
            images = images.cuda(args.gpu, non_blocking=True)
            target = target.cuda(args.gpu, non_blocking=True)
            output = model(images)
            losses.update(criterion(output, target).item(), images.size(0))
            top1.update(accuracy(output, target), images.size(0))
    print(f" * Acc@1 {top1.avg:.3f} Loss {losses.avg:.4f}")
    return top1.avg


def main():
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    cudnn.benchmark = True
    if not torch.cuda.is_available():
        raise SystemExit("This script needs a GPU")
    print(f"Use GPU: {args.gpu} for training")
    torch.cuda.set_device(args.gpu)

    model = Net().cuda()
    criterion = nn.CrossEntropyLoss().cuda(args.gpu)
    optimizer = torch.optim.SGD(model.parameters(), args.lr, momentum=0.9, weight_decay=1e-4, nesterov=True)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)

    loader_args = dict(batch_size=args.batch_size, num_workers=args.workers, pin_memory=True,
                       persistent_workers=args.workers > 0,
                       multiprocessing_context=args.mp_context if args.workers > 0 else None)
    train_loader = DataLoader(Shapes(256, seed=0), shuffle=True, drop_last=True, **loader_args)
    val_loader = DataLoader(Shapes(128, seed=1, train=False), shuffle=False, **loader_args)

    best_acc1 = 0.0
    for epoch in range(args.epochs):
        start = time.time()
        loss, acc = train(train_loader, model, criterion, optimizer, epoch, args)
        scheduler.step()
        acc1 = validate(val_loader, model, criterion, args)
        best_acc1 = max(acc1, best_acc1)
        print(f"epoch {epoch} train loss {loss:.4f} train acc {acc:.2f} ({time.time() - start:.1f}s)")
    print(f"best acc {best_acc1:.3f}")
    print(f"weights checksum {sum(p.detach().double().sum().item() for p in model.parameters()):.6f}")


if __name__ == "__main__":
    main()
