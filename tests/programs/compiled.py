"""
torch.compile a small model on the GPU, check it against eager, and train it a few steps.

    python compiled.py
"""
import torch
import torch.nn as nn
import torch.nn.functional as F


class MLP(nn.Module):
    def __init__(self, dim=32, hidden=64):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, hidden)
        self.down = nn.Linear(hidden, dim)

    def forward(self, x):
        return x + self.down(F.gelu(self.up(self.norm(x))))


def main():
    torch.manual_seed(0)
    device = "cuda"
    model = MLP().to(device)
    compiled = torch.compile(model)
    x = torch.randn(16, 32, device=device)

    with torch.no_grad():
        eager_out = model(x)
        compiled_out = compiled(x)
    print(f"compiled output on {compiled_out.device.type}, max abs diff vs eager "
          f"{(eager_out - compiled_out).abs().max().item():.2e}")

    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    target = torch.randn(16, 32, device=device)
    for step in range(5):
        loss = F.mse_loss(compiled(x), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        print(f"step {step} loss {loss.item():.6f}")
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
