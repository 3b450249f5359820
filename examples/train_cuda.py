"""A small CUDA training script, written for an NVIDIA GPU and left unmodified.

With torchdevice installed it runs on Apple Silicon (MPS) or the CPU.
"""
import torch
import torch.nn as nn

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

torch.save(model.state_dict(), "/tmp/train_cuda_checkpoint.pt")
model.load_state_dict(torch.load("/tmp/train_cuda_checkpoint.pt"))
accuracy = (model(x).argmax(1) == y).float().mean().item()
print(f"accuracy {accuracy:.3f}  tensors on {x.device}")
