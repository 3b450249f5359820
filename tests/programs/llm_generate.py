"""LLM inference in the style of gpt-fast / llama-style generate.py scripts.

Picks the dtype with ``torch.cuda.is_bf16_supported()``, builds the model on the
meta device (``with torch.device("meta")``), loads a checkpoint with
``torch.load(..., mmap=True, weights_only=True)`` and
``load_state_dict(assign=True)``, moves it with ``.to(device=device, dtype=dtype)``,
preallocates a static KV cache on the GPU, prefills with
``scaled_dot_product_attention(is_causal=True)`` and decodes one token at a time
under ``torch.inference_mode()``, samples with temperature + top-k from a
``torch.Generator(device=device)``, and reports the GPU the usual way:
``get_device_name``, ``torch.cuda.synchronize()`` around ``time.perf_counter()``,
tokens/s, ``max_memory_allocated``, ``reset_peak_memory_stats``, ``empty_cache``.

The first run writes a checkpoint of a randomly initialised model (no weights
can be downloaded), the second generates from it:

    python llm_generate.py --convert ckpt.pth
    python llm_generate.py --checkpoint ckpt.pth --max-new-tokens 24
"""
import argparse
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

parser = argparse.ArgumentParser(description="Generate text from a tiny transformer")
parser.add_argument("--convert", type=str, default=None, help="write a checkpoint here and exit")
parser.add_argument("--checkpoint", type=str, default="ckpt.pth")
parser.add_argument("--prompt", type=str, default="hello torch")
parser.add_argument("--num-samples", type=int, default=2)
parser.add_argument("--max-new-tokens", type=int, default=24)
parser.add_argument("--temperature", type=float, default=0.8)
parser.add_argument("--top-k", type=int, default=20)
parser.add_argument("--seed", type=int, default=1234)
parser.add_argument("--device", type=str, default="cuda")


@dataclass
class ModelArgs:
    vocab_size: int = 256  # bytes
    n_layer: int = 2
    n_head: int = 4
    dim: int = 64
    block_size: int = 64


class KVCache(nn.Module):
    def __init__(self, max_batch_size, max_seq_length, n_heads, head_dim, dtype):
        super().__init__()
        cache_shape = (max_batch_size, n_heads, max_seq_length, head_dim)
        self.register_buffer("k_cache", torch.zeros(cache_shape, dtype=dtype))
        self.register_buffer("v_cache", torch.zeros(cache_shape, dtype=dtype))

    def update(self, input_pos, k_val, v_val):
        # input_pos: [S], k_val: [B, H, S, D]
        k_out, v_out = self.k_cache, self.v_cache
        k_out[:, :, input_pos] = k_val
        v_out[:, :, input_pos] = v_val
        return k_out, v_out


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.wqkv = nn.Linear(config.dim, 3 * config.dim, bias=False)
        self.wo = nn.Linear(config.dim, config.dim, bias=False)
        self.n_head, self.head_dim = config.n_head, config.dim // config.n_head
        self.kv_cache = None

    def forward(self, x, mask, input_pos=None):
        bsz, seqlen, _ = x.shape
        q, k, v = self.wqkv(x).split(x.size(-1), dim=-1)
        q, k, v = (t.view(bsz, seqlen, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        if self.kv_cache is not None:
            k, v = self.kv_cache.update(input_pos, k, v)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0)
        return self.wo(y.transpose(1, 2).contiguous().view(bsz, seqlen, -1))


class Block(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = Attention(config)
        self.feed_forward = nn.Sequential(nn.Linear(config.dim, 4 * config.dim, bias=False), nn.GELU(),
                                          nn.Linear(4 * config.dim, config.dim, bias=False))
        self.attention_norm = nn.LayerNorm(config.dim)
        self.ffn_norm = nn.LayerNorm(config.dim)

    def forward(self, x, mask, input_pos):
        h = x + self.attention(self.attention_norm(x), mask, input_pos)
        return h + self.feed_forward(self.ffn_norm(h))


class Transformer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.pos_embeddings = nn.Embedding(config.block_size, config.dim)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.norm = nn.LayerNorm(config.dim)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        self.causal_mask = None

    def setup_caches(self, max_batch_size, max_seq_length):
        head_dim = self.config.dim // self.config.n_head
        dtype = self.output.weight.dtype
        device = self.output.weight.device
        for b in self.layers:
            b.attention.kv_cache = KVCache(max_batch_size, max_seq_length, self.config.n_head, head_dim,
                                           dtype).to(device)
        self.causal_mask = torch.tril(torch.ones(max_seq_length, max_seq_length, dtype=torch.bool, device=device))

    def forward(self, idx, input_pos=None):
        if input_pos is None:  # no cache: full causal attention over idx
            input_pos = torch.arange(idx.size(1), device=idx.device)
            mask = torch.tril(torch.ones(idx.size(1), idx.size(1), dtype=torch.bool, device=idx.device))
        else:
            mask = self.causal_mask[None, None, input_pos]
        x = self.tok_embeddings(idx) + self.pos_embeddings(input_pos)
        for layer in self.layers:
            x = layer(x, mask, input_pos)
        return self.output(self.norm(x))


def logits_to_probs(logits, temperature=1.0, top_k=None):
    logits = logits / max(temperature, 1e-5)
    if top_k is not None:
        v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
        pivot = v.select(-1, -1).unsqueeze(-1)
        logits = torch.where(logits < pivot, -float("Inf"), logits)
    return torch.nn.functional.softmax(logits.float(), dim=-1)


def sample(logits, generator, temperature, top_k):
    probs = logits_to_probs(logits[:, -1], temperature, top_k)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.inference_mode()
def generate(model, prompt, max_new_tokens, generator, temperature, top_k):
    bsz, t = prompt.shape
    device = prompt.device
    model.setup_caches(max_batch_size=bsz, max_seq_length=t + max_new_tokens)
    input_pos = torch.arange(0, t, device=device)
    next_token = sample(model(prompt, input_pos), generator, temperature, top_k)
    tokens = [next_token]
    input_pos = torch.tensor([t], device=device, dtype=torch.int)
    for _ in range(max_new_tokens - 1):
        logits = model(next_token.view(bsz, -1), input_pos)
        next_token = sample(logits, generator, temperature, top_k)
        input_pos += 1
        tokens.append(next_token)
    return torch.cat([prompt] + tokens, dim=1)


@torch.inference_mode()
def cache_matches_full_forward(model, seq):
    """The last step's logits from the KV cache against a full forward pass."""
    model.setup_caches(max_batch_size=seq.size(0), max_seq_length=seq.size(1))
    model(seq[:, :-1], torch.arange(seq.size(1) - 1, device=seq.device))
    cached = model(seq[:, -1:], torch.tensor([seq.size(1) - 1], device=seq.device))[:, -1]
    for layer in model.layers:
        layer.attention.kv_cache = None
    full = model(seq)[:, -1]
    return (cached.float() - full.float()).abs().max().item()


def encode(text):
    return list(text.encode("utf-8"))


def decode(tokens):
    return bytes(tokens).decode("utf-8", errors="replace")


def main():
    args = parser.parse_args()
    device = args.device
    if args.convert:
        torch.manual_seed(0)
        model = Transformer(ModelArgs()).to(device)
        torch.save(model.state_dict(), args.convert)
        print(f"saved {sum(p.numel() for p in model.parameters())} parameters to {args.convert}")
        return

    torch.manual_seed(args.seed)
    dtype = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float16
    print(f"Using device={device} {torch.cuda.get_device_name(0)}, dtype={dtype}")

    t0 = time.perf_counter()
    with torch.device("meta"):
        model = Transformer(ModelArgs())
    checkpoint = torch.load(args.checkpoint, mmap=True, weights_only=True)
    model.load_state_dict(checkpoint, assign=True)
    model = model.to(device=device, dtype=dtype)
    model.eval()
    torch.cuda.synchronize()
    print(f"Time to load model: {time.perf_counter() - t0:.02f} seconds")

    prompt = torch.tensor(encode(args.prompt), dtype=torch.int, device=device)
    prompt = prompt.unsqueeze(0).repeat(args.num_samples, 1)
    generator = torch.Generator(device=device)
    generator.manual_seed(args.seed)

    torch.cuda.reset_peak_memory_stats()
    for i in range(2):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        y = generate(model, prompt, args.max_new_tokens, generator, args.temperature, args.top_k)
        torch.cuda.synchronize()
        t = time.perf_counter() - t0
        for row in y.tolist():
            print(f"sample {i}: {decode(row)!r}")
        tokens_generated = y.size(0) * (y.size(1) - prompt.size(1))
        print(f"Time for inference {i + 1}: {t:.02f} sec total, {tokens_generated / t:.02f} tokens/sec")
    print(f"Memory used: {torch.cuda.max_memory_allocated() / 1e9:.02f} GB")
    print(f"KV cache vs full forward: max |logit diff| {cache_matches_full_forward(model, y):.4f}")
    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
