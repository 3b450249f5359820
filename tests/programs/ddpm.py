"""A small DDPM (denoising diffusion) training + sampling loop, as diffusion tutorials write it.

A linear beta schedule registered as buffers (moved with ``model.to(device)``),
``torch.randint(..., device=device)`` timesteps, ``torch.randn_like`` noise,
sinusoidal time embeddings built with ``torch.arange(..., device=t.device)``,
an EMA copy of the model (``copy.deepcopy`` + ``requires_grad_(False)`` +
``lerp_``), ``torch.backends.cudnn.benchmark = True``,
``torch.cuda.manual_seed_all``, ``optimizer.zero_grad(set_to_none=True)``, a
checkpoint with model, EMA, optimizer and step, and ancestral sampling under
``@torch.no_grad()`` from the EMA model.

The data is a 2-D mixture of Gaussians (generated here):

    python ddpm.py --steps 150
"""
import argparse
import copy
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=150)
parser.add_argument("--batch_size", type=int, default=128)
parser.add_argument("--timesteps", type=int, default=50)
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--ema_decay", type=float, default=0.95)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--ckpt", type=str, default="ddpm.pt")


def set_seed(seed):
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def sample_data(n, device):
    centers = torch.tensor([[2.0, 2.0], [-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0]], device=device)
    idx = torch.randint(0, 4, (n,), device=device)
    return centers[idx] + 0.3 * torch.randn(n, 2, device=device)


class SinusoidalPosEmb(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.dim = dim

    def forward(self, t):
        half = self.dim // 2
        emb = math.log(10000) / (half - 1)
        emb = torch.exp(torch.arange(half, device=t.device) * -emb)
        emb = t[:, None].float() * emb[None, :]
        return torch.cat((emb.sin(), emb.cos()), dim=-1)


class Denoiser(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.time_mlp = nn.Sequential(SinusoidalPosEmb(32), nn.Linear(32, dim), nn.SiLU())
        self.inp = nn.Linear(2, dim)
        self.net = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, 2))

    def forward(self, x, t):
        return self.net(self.inp(x) + self.time_mlp(t))


class GaussianDiffusion(nn.Module):
    def __init__(self, model, timesteps):
        super().__init__()
        self.model = model
        self.num_timesteps = timesteps
        betas = torch.linspace(1e-4, 0.2, timesteps)
        alphas = 1.0 - betas
        alphas_cumprod = torch.cumprod(alphas, dim=0)
        alphas_cumprod_prev = F.pad(alphas_cumprod[:-1], (1, 0), value=1.0)
        self.register_buffer("betas", betas)
        self.register_buffer("sqrt_alphas_cumprod", alphas_cumprod.sqrt())
        self.register_buffer("sqrt_one_minus_alphas_cumprod", (1.0 - alphas_cumprod).sqrt())
        self.register_buffer("sqrt_recip_alphas", (1.0 / alphas).sqrt())
        self.register_buffer("posterior_variance", betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod))

    def q_sample(self, x_start, t, noise):
        return (self.sqrt_alphas_cumprod[t][:, None] * x_start
                + self.sqrt_one_minus_alphas_cumprod[t][:, None] * noise)

    def forward(self, x_start):
        b = x_start.shape[0]
        t = torch.randint(0, self.num_timesteps, (b,), device=x_start.device).long()
        noise = torch.randn_like(x_start)
        x_noisy = self.q_sample(x_start, t, noise)
        return F.mse_loss(self.model(x_noisy, t), noise)

    @torch.no_grad()
    def sample(self, n):
        device = self.betas.device
        x = torch.randn(n, 2, device=device)
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((n,), i, device=device, dtype=torch.long)
            eps = self.model(x, t)
            coef = self.betas[t][:, None] / self.sqrt_one_minus_alphas_cumprod[t][:, None]
            mean = self.sqrt_recip_alphas[t][:, None] * (x - coef * eps)
            if i > 0:
                x = mean + self.posterior_variance[t][:, None].sqrt() * torch.randn_like(x)
            else:
                x = mean
        return x


@torch.no_grad()
def update_ema(ema_model, model, decay):
    for ema_p, p in zip(ema_model.parameters(), model.parameters()):
        ema_p.lerp_(p, 1.0 - decay)


def main():
    args = parser.parse_args()
    set_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    device = "cuda" if torch.cuda.is_available() else "cpu"

    diffusion = GaussianDiffusion(Denoiser(), args.timesteps).to(device)
    ema = copy.deepcopy(diffusion).requires_grad_(False)
    optimizer = torch.optim.AdamW(diffusion.parameters(), lr=args.lr)

    for step in range(1, args.steps + 1):
        x0 = sample_data(args.batch_size, device)
        loss = diffusion(x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        update_ema(ema, diffusion, args.ema_decay)
        if step % 25 == 0:
            print(f"step {step:4d} | loss {loss.item():.6f}")

    torch.save({"model": diffusion.state_dict(), "ema": ema.state_dict(), "opt": optimizer.state_dict(),
                "step": args.steps}, args.ckpt)
    ckpt = torch.load(args.ckpt, map_location=device)
    sampler = GaussianDiffusion(Denoiser(), args.timesteps).to(device)
    sampler.load_state_dict(ckpt["ema"])
    samples = sampler.sample(512)
    # a good model puts its samples near the four modes (|x|, |y| ~ 2)
    near = ((samples.abs() - 2.0).abs() < 0.9).all(dim=1).float().mean().item()
    print(f"resumed at step {ckpt['step']}, samples near a mode: {near:.4f}")
    print(f"sample mean {samples.mean(0).tolist()} std {samples.std(0).tolist()}")


if __name__ == "__main__":
    main()
