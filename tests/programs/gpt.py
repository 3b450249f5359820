"""
Train a tiny character-level GPT, nanoGPT style, with mixed precision on one GPU.

    python gpt.py --out_dir out                      # train from scratch, save out/ckpt.pt
    python gpt.py --out_dir out --init_from resume   # continue from the checkpoint
    python gpt.py --out_dir out --init_from resume --sample_only

bfloat16 autocast by default on GPUs that have it, float16 with a GradScaler
otherwise (or pick with --dtype). After training, samples a few lines of text.
"""
import argparse
import math
import os
import time

import torch
import torch.nn as nn
from torch.nn import functional as F

TEXT = """\
ROMEO: The moon is up and every lamp is lit along the river road.
JULIET: Then walk it slowly, for the night is long and we are young.
ROMEO: I count the bridges as we pass, and every one is old.
JULIET: Count the stars instead; they do not crumble under carts.
NURSE: Come in, come in, the bread is warm and the fire wants wood.
ROMEO: We come, good nurse, but let the river finish its song.
"""

parser = argparse.ArgumentParser()
parser.add_argument("--out_dir", default="out-tiny-gpt")
parser.add_argument("--init_from", default="scratch", choices=["scratch", "resume"])
parser.add_argument("--max_iters", type=int, default=20)
parser.add_argument("--eval_interval", type=int, default=10)
parser.add_argument("--eval_iters", type=int, default=4)
parser.add_argument("--batch_size", type=int, default=8)
parser.add_argument("--block_size", type=int, default=32)
parser.add_argument("--n_layer", type=int, default=2)
parser.add_argument("--n_head", type=int, default=2)
parser.add_argument("--n_embd", type=int, default=32)
parser.add_argument("--dropout", type=float, default=0.1)
parser.add_argument("--learning_rate", type=float, default=3e-3)
parser.add_argument("--warmup_iters", type=int, default=5)
parser.add_argument("--grad_clip", type=float, default=1.0)
parser.add_argument("--device", default="cuda", help="cuda, cuda:1, cpu, ...")
parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
parser.add_argument("--compile", action="store_true")
parser.add_argument("--sample_only", action="store_true")
parser.add_argument("--num_samples", type=int, default=2)
parser.add_argument("--max_new_tokens", type=int, default=40)
parser.add_argument("--seed", type=int, default=1337)
args = parser.parse_args()

device = args.device
device_type = "cuda" if "cuda" in device else "cpu"
if args.dtype == "auto":
    args.dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[args.dtype]
torch.manual_seed(args.seed)
torch.cuda.manual_seed(args.seed)
torch.backends.cuda.matmul.allow_tf32 = True
torch.backends.cudnn.allow_tf32 = True
ctx = torch.autocast(device_type, dtype=ptdtype, enabled=args.dtype != "float32")

# -- data -----------------------------------------------------------------------------
chars = sorted(set(TEXT))
stoi = {ch: i for i, ch in enumerate(chars)}
itos = {i: ch for ch, i in stoi.items()}
encode = lambda s: [stoi[c] for c in s]  # noqa: E731
decode = lambda ids: "".join(itos[i] for i in ids)  # noqa: E731
data = torch.tensor(encode(TEXT), dtype=torch.long)
n = int(0.85 * len(data))
train_data, val_data = data[:n], data[n:]


def get_batch(split):
    source = train_data if split == "train" else val_data
    ix = torch.randint(len(source) - args.block_size, (args.batch_size,))
    x = torch.stack([source[i:i + args.block_size] for i in ix])
    y = torch.stack([source[i + 1:i + 1 + args.block_size] for i in ix])
    if device_type == "cuda":
        x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    else:
        x, y = x.to(device), y.to(device)
    return x, y


# -- model ----------------------------------------------------------------------------
class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.resid_dropout = nn.Dropout(dropout)
        self.n_head = n_head
        self.dropout = dropout

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, dropout):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = CausalSelfAttention(n_embd, n_head, dropout)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd),
                                 nn.Dropout(dropout))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, dropout):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.drop = nn.Dropout(dropout)
        self.h = nn.ModuleList([Block(n_embd, n_head, dropout) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            torch.nn.init.zeros_(module.bias)

    def forward(self, idx, targets=None):
        b, t = idx.size()
        pos = torch.arange(0, t, dtype=torch.long, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        if targets is None:
            return self.lm_head(x[:, [-1], :]), None
        logits = self.lm_head(x)
        return logits, F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))

    @torch.no_grad()
    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None):
        for _ in range(max_new_tokens):
            idx_cond = idx if idx.size(1) <= self.block_size else idx[:, -self.block_size:]
            logits, _ = self(idx_cond)
            logits = logits[:, -1, :] / temperature
            if top_k is not None:
                v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                logits[logits < v[:, [-1]]] = -float("inf")
            probs = F.softmax(logits.float(), dim=-1)
            idx = torch.cat((idx, torch.multinomial(probs, num_samples=1)), dim=1)
        return idx


model_args = dict(vocab_size=len(chars), block_size=args.block_size, n_layer=args.n_layer, n_head=args.n_head,
                  n_embd=args.n_embd, dropout=args.dropout)
ckpt_path = os.path.join(args.out_dir, "ckpt.pt")
iter_num, best_val_loss = 0, 1e9
checkpoint = None
if args.init_from == "resume":
    print(f"Resuming training from {args.out_dir}")
    checkpoint = torch.load(ckpt_path, map_location=device)
    model_args = checkpoint["model_args"]
    iter_num, best_val_loss = checkpoint["iter_num"], checkpoint["best_val_loss"]
model = GPT(**model_args)
if checkpoint is not None:
    model.load_state_dict(checkpoint["model"])
model.to(device)
print(f"number of parameters: {sum(p.numel() for p in model.parameters()) / 1e3:.1f}K")

scaler = torch.amp.GradScaler(device_type, enabled=(args.dtype == "float16"))
optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, betas=(0.9, 0.95), weight_decay=0.1)
if checkpoint is not None:
    optimizer.load_state_dict(checkpoint["optimizer"])
    if "scaler" in checkpoint:
        scaler.load_state_dict(checkpoint["scaler"])
checkpoint = None  # free up memory
if args.compile:
    print("compiling the model...")
    model = torch.compile(model)


@torch.no_grad()
def estimate_loss():
    out = {}
    model.eval()
    for split in ("train", "val"):
        losses = torch.zeros(args.eval_iters)
        for k in range(args.eval_iters):
            X, Y = get_batch(split)
            with ctx:
                _, loss = model(X, Y)
            losses[k] = loss.item()
        out[split] = losses.mean()
    model.train()
    return out


def get_lr(it):
    if it < args.warmup_iters:
        return args.learning_rate * (it + 1) / (args.warmup_iters + 1)
    decay_ratio = min(1.0, (it - args.warmup_iters) / 100)
    return 0.1 * args.learning_rate + 0.45 * args.learning_rate * (1.0 + math.cos(math.pi * decay_ratio))


def save_checkpoint():
    os.makedirs(args.out_dir, exist_ok=True)
    print(f"saving checkpoint to {args.out_dir}")
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "model_args": model_args, "iter_num": iter_num, "best_val_loss": best_val_loss}, ckpt_path)


if not args.sample_only:
    X, Y = get_batch("train")
    t0 = time.time()
    while iter_num < args.max_iters:
        for param_group in optimizer.param_groups:
            param_group["lr"] = get_lr(iter_num)
        if iter_num % args.eval_interval == 0 and iter_num > 0:
            losses = estimate_loss()
            print(f"step {iter_num}: train loss {losses['train']:.4f}, val loss {losses['val']:.4f}")
            best_val_loss = min(best_val_loss, losses["val"].item())
        with ctx:
            logits, loss = model(X, Y)
        X, Y = get_batch("train")  # prefetch the next batch while the GPU works
        scaler.scale(loss).backward()
        if args.grad_clip != 0.0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        t1 = time.time()
        dt, t0 = t1 - t0, t1
        print(f"iter {iter_num}: loss {loss.item():.4f}, time {dt * 1000:.2f}ms")
        iter_num += 1
    save_checkpoint()

# -- sample -----------------------------------------------------------------------------
model.eval()
torch.manual_seed(args.seed)
torch.cuda.manual_seed(args.seed)
start = torch.tensor(encode("ROMEO:"), dtype=torch.long, device=device)[None, ...]
with torch.no_grad():
    with ctx:
        for _ in range(args.num_samples):
            y = model.generate(start, args.max_new_tokens, temperature=0.8, top_k=10)
            print(repr(decode(y[0].tolist())))
            print("---------------")
