"""Fine-tuning a small transformer classifier with a hand-written loop, the way
Hugging Face-style scripts (run_glue_no_trainer.py and its many copies) write it.

``set_seed`` (random, numpy, ``torch.manual_seed``, ``torch.cuda.manual_seed_all``),
``device = torch.device("cuda" if torch.cuda.is_available() else "cpu")`` and
``n_gpu = torch.cuda.device_count()``, batches as dicts moved with
``{k: v.to(device) for k, v in batch.items()}``, ``outputs = model(**batch)``
returning the loss, AdamW with the no-decay parameter groups (bias, LayerNorm),
a linear warmup schedule (``LambdaLR``), gradient accumulation, ``clip_grad_norm_``,
``optimizer.zero_grad(set_to_none=True)``, evaluation under ``torch.no_grad()``
with ``.detach().cpu().numpy()``, and ``save_pretrained``-style output
(``pytorch_model.bin`` + a JSON config) reloaded with ``map_location="cpu"``.

A synthetic "sentiment" task: token sequences whose label is whether more
positive than negative tokens occur (no downloads):

    python hf_finetune.py --output_dir out --num_train_epochs 3
"""
import argparse
import json
import math
import os
import random

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

parser = argparse.ArgumentParser()
parser.add_argument("--output_dir", type=str, default="out")
parser.add_argument("--per_device_train_batch_size", type=int, default=16)
parser.add_argument("--per_device_eval_batch_size", type=int, default=32)
parser.add_argument("--learning_rate", type=float, default=1e-3)
parser.add_argument("--weight_decay", type=float, default=0.01)
parser.add_argument("--num_train_epochs", type=int, default=3)
parser.add_argument("--gradient_accumulation_steps", type=int, default=2)
parser.add_argument("--num_warmup_steps", type=int, default=4)
parser.add_argument("--max_grad_norm", type=float, default=1.0)
parser.add_argument("--seed", type=int, default=42)


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


class SentimentDataset(Dataset):
    POS, NEG, PAD, CLS = range(2, 6), range(6, 10), 0, 1

    def __init__(self, n, seed, max_len=16, vocab=32):
        rng = np.random.default_rng(seed)
        self.examples = []
        for _ in range(n):
            length = int(rng.integers(8, max_len))
            ids = rng.integers(10, vocab, size=length)
            n_pos, n_neg = rng.integers(0, 4, size=2)
            n_pos += n_pos == n_neg
            slots = rng.choice(length, size=n_pos + n_neg, replace=False)
            ids[slots[:n_pos]] = rng.integers(2, 6, size=n_pos)
            ids[slots[n_pos:]] = rng.integers(6, 10, size=n_neg)
            ids = [self.CLS] + ids.tolist()
            mask = [1] * len(ids) + [0] * (max_len + 1 - len(ids))
            ids = ids + [self.PAD] * (max_len + 1 - len(ids))
            self.examples.append({"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask),
                                  "labels": torch.tensor(int(n_pos > n_neg))})

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        return self.examples[i]


class TinyBertForSequenceClassification(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = nn.Embedding(config["vocab_size"], config["hidden_size"])
        self.position_embeddings = nn.Embedding(config["max_position_embeddings"], config["hidden_size"])
        self.LayerNorm = nn.LayerNorm(config["hidden_size"])
        layer = nn.TransformerEncoderLayer(config["hidden_size"], config["num_attention_heads"],
                                           dim_feedforward=2 * config["hidden_size"], dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, config["num_hidden_layers"], enable_nested_tensor=False)
        self.classifier = nn.Linear(config["hidden_size"], config["num_labels"])

    def forward(self, input_ids, attention_mask=None, labels=None):
        positions = torch.arange(input_ids.size(1), device=input_ids.device)
        hidden = self.LayerNorm(self.embeddings(input_ids) + self.position_embeddings(positions))
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        logits = self.classifier(hidden[:, 0])
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits.view(-1, self.config["num_labels"]), labels.view(-1))
        return {"loss": loss, "logits": logits}

    def save_pretrained(self, save_directory):
        os.makedirs(save_directory, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(save_directory, "pytorch_model.bin"))
        with open(os.path.join(save_directory, "config.json"), "w") as f:
            json.dump(self.config, f)

    @classmethod
    def from_pretrained(cls, directory):
        with open(os.path.join(directory, "config.json")) as f:
            model = cls(json.load(f))
        state = torch.load(os.path.join(directory, "pytorch_model.bin"), map_location="cpu")
        model.load_state_dict(state)
        return model


def get_linear_schedule_with_warmup(optimizer, num_warmup_steps, num_training_steps):
    def lr_lambda(current_step):
        if current_step < num_warmup_steps:
            return float(current_step) / float(max(1, num_warmup_steps))
        return max(0.0, float(num_training_steps - current_step)
                   / float(max(1, num_training_steps - num_warmup_steps)))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)


def evaluate(model, dataloader, device):
    model.eval()
    preds, refs = [], []
    for batch in dataloader:
        batch = {k: v.to(device) for k, v in batch.items()}
        with torch.no_grad():
            outputs = model(**batch)
        preds.append(outputs["logits"].argmax(dim=-1).detach().cpu().numpy())
        refs.append(batch["labels"].detach().cpu().numpy())
    return float((np.concatenate(preds) == np.concatenate(refs)).mean())


def main():
    args = parser.parse_args()
    set_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_gpu = torch.cuda.device_count()
    print(f"device: {device}, n_gpu: {n_gpu}")

    config = {"vocab_size": 32, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
              "max_position_embeddings": 32, "num_labels": 2}
    model = TinyBertForSequenceClassification(config)
    model.to(device)

    train_dataset, eval_dataset = SentimentDataset(256, 0), SentimentDataset(128, 1)
    train_dataloader = DataLoader(train_dataset, shuffle=True, batch_size=args.per_device_train_batch_size)
    eval_dataloader = DataLoader(eval_dataset, batch_size=args.per_device_eval_batch_size)

    no_decay = ["bias", "LayerNorm.weight", "norm1.weight", "norm2.weight"]
    optimizer_grouped_parameters = [
        {"params": [p for n, p in model.named_parameters() if not any(nd in n for nd in no_decay)],
         "weight_decay": args.weight_decay},
        {"params": [p for n, p in model.named_parameters() if any(nd in n for nd in no_decay)],
         "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(optimizer_grouped_parameters, lr=args.learning_rate)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.num_train_epochs * num_update_steps_per_epoch
    lr_scheduler = get_linear_schedule_with_warmup(optimizer, args.num_warmup_steps, max_train_steps)

    print("***** Running training *****")
    print(f"  Num examples = {len(train_dataset)}")
    print(f"  Total optimization steps = {max_train_steps}")
    completed_steps = 0
    for epoch in range(args.num_train_epochs):
        model.train()
        total_loss = 0.0
        for step, batch in enumerate(train_dataloader):
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = model(**batch)
            loss = outputs["loss"]
            total_loss += loss.detach().float()
            loss = loss / args.gradient_accumulation_steps
            loss.backward()
            if step % args.gradient_accumulation_steps == 0 or step == len(train_dataloader) - 1:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                completed_steps += 1
        accuracy = evaluate(model, eval_dataloader, device)
        print(f"epoch {epoch}: train_loss {total_loss.item() / len(train_dataloader):.6f} "
              f"eval_accuracy {accuracy:.4f} lr {lr_scheduler.get_last_lr()[0]:.6f} steps {completed_steps}")

    model.save_pretrained(args.output_dir)
    reloaded = TinyBertForSequenceClassification.from_pretrained(args.output_dir).to(device)
    print(f"reloaded eval_accuracy {evaluate(reloaded, eval_dataloader, device):.4f}")


if __name__ == "__main__":
    main()
