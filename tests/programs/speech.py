"""Keyword spotting on spectrograms, as speech-command tutorials write it.

Variable-length waveforms padded by a ``collate_fn`` (``pad_sequence``), a
DataLoader with ``pin_memory=True`` and ``.to(device, non_blocking=True)``,
features computed *on the GPU* (``torch.stft`` with ``torch.hann_window(...,
device=device)``, a mel filter bank matrix, log compression), a Conv1d front end,
a bidirectional LSTM fed with ``pack_padded_sequence(x, lengths.cpu(), ...)``
(lengths must be on the CPU), ``ReduceLROnPlateau``, ``model.train()`` /
``model.eval()`` and the best model kept with ``copy.deepcopy(state_dict)``.

Waveforms are synthetic tones whose pitch contour is the class:

    python speech.py --epochs 4
"""
import argparse
import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence, pad_sequence
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=4)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--lr", type=float, default=3e-3)
parser.add_argument("--seed", type=int, default=7)
SAMPLE_RATE = 4000
LABELS = ["up", "down", "flat", "vee"]


class Tones(Dataset):
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.items = []
        for _ in range(n):
            label = int(torch.randint(0, 4, (1,), generator=g))
            length = int(torch.randint(1600, 3200, (1,), generator=g))
            t = torch.arange(length) / SAMPLE_RATE
            u = t / t[-1]
            f0, f1 = 300.0, 900.0
            contour = [f0 + (f1 - f0) * u, f1 - (f1 - f0) * u, torch.full_like(u, 600.0),
                       f1 - (f1 - f0) * (1 - (2 * u - 1).abs())][label]
            phase = 2 * math.pi * torch.cumsum(contour, 0) / SAMPLE_RATE
            wave = 0.5 * torch.sin(phase) + 0.05 * torch.randn(length, generator=g)
            self.items.append((wave, label))

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate_fn(batch):
    waves = [w for w, _ in batch]
    lengths = torch.tensor([len(w) for w in waves])
    targets = torch.tensor([label for _, label in batch])
    return pad_sequence(waves, batch_first=True), lengths, targets


def mel_filterbank(n_fft, n_mels, sample_rate, device):
    def hz_to_mel(f):
        return 2595.0 * math.log10(1.0 + f / 700.0)

    mels = torch.linspace(hz_to_mel(0.0), hz_to_mel(sample_rate / 2), n_mels + 2, device=device)
    hz = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, device=device)
    lower, center, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    up = (freqs[None] - lower) / (center - lower)
    down = (upper - freqs[None]) / (upper - center)
    return torch.clamp(torch.minimum(up, down), min=0.0)  # (n_mels, n_freqs)


class LogMel(nn.Module):
    def __init__(self, n_fft=256, hop=128, n_mels=24):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft))
        self.register_buffer("fbank", mel_filterbank(n_fft, n_mels, SAMPLE_RATE, "cpu"))

    def forward(self, wave, lengths):
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2
        mel = torch.matmul(self.fbank, spec)  # (B, n_mels, frames)
        frames = lengths // self.hop + 1
        return torch.log(mel + 1e-6), frames


class KeywordNet(nn.Module):
    def __init__(self, n_mels=24, hidden=32, n_classes=4):
        super().__init__()
        self.features = LogMel(n_mels=n_mels)
        self.conv = nn.Sequential(nn.Conv1d(n_mels, hidden, 3, padding=1), nn.BatchNorm1d(hidden), nn.ReLU())
        self.lstm = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, n_classes)

    def forward(self, wave, lengths):
        x, frames = self.features(wave, lengths)
        x = self.conv(x).transpose(1, 2)  # (B, frames, hidden)
        packed = pack_padded_sequence(x, frames.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, out_lengths = pad_packed_sequence(out, batch_first=True)
        mask = (torch.arange(out.size(1), device=out.device)[None] < out_lengths.to(out.device)[:, None])
        pooled = (out * mask.unsqueeze(-1)).sum(1) / out_lengths.to(out.device)[:, None]
        return self.fc(pooled)


def run_epoch(model, loader, device, optimizer=None):
    training = optimizer is not None
    model.train(training)
    total, correct, loss_sum = 0, 0, 0.0
    with torch.set_grad_enabled(training):
        for wave, lengths, target in loader:
            wave = wave.to(device, non_blocking=True)
            target = target.to(device, non_blocking=True)
            output = model(wave, lengths.to(device))
            loss = F.cross_entropy(output, target)
            if training:
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            loss_sum += loss.item() * len(target)
            correct += (output.argmax(1) == target).sum().item()
            total += len(target)
    return loss_sum / total, 100.0 * correct / total


def main():
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"Training on {device}")
    pin = device.type == "cuda"
    train_loader = DataLoader(Tones(128, 0), batch_size=args.batch_size, shuffle=True, collate_fn=collate_fn,
                              pin_memory=pin)
    val_loader = DataLoader(Tones(48, 1), batch_size=args.batch_size, collate_fn=collate_fn, pin_memory=pin)

    model = KeywordNet().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5, patience=1)
    best_acc, best_state = 0.0, None
    for epoch in range(1, args.epochs + 1):
        train_loss, train_acc = run_epoch(model, train_loader, device, optimizer)
        val_loss, val_acc = run_epoch(model, val_loader, device)
        scheduler.step(val_acc)
        print(f"epoch {epoch} train loss {train_loss:.6f} acc {train_acc:.2f} | "
              f"val loss {val_loss:.6f} acc {val_acc:.2f} | lr {optimizer.param_groups[0]['lr']:.5f}")
        if val_acc > best_acc:
            best_acc, best_state = val_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    _, acc = run_epoch(model, val_loader, device)
    print(f"best val acc {best_acc:.2f} (reloaded: {acc:.2f})")


if __name__ == "__main__":
    main()
