"""transformers ``Trainer`` with ``TrainingArguments(fp16=True)`` or ``bf16=True``
on a machine whose GPU it finds itself, as its documentation shows.

    python transformers_train.py fp16|bf16
"""
import json
import sys
import tempfile

import torch
from transformers import Trainer, TrainingArguments

from hf_tiny import make_checkpoint


class Patterns(torch.utils.data.Dataset):
    """Repeating token patterns a tiny model learns within a few steps."""

    def __len__(self):
        return 64

    def __getitem__(self, i):
        ids = (torch.arange(24) * (1 + i % 3) + i % 5) % 90
        return {"input_ids": ids, "labels": ids}


def main():
    mode = sys.argv[1]
    from transformers import AutoModelForCausalLM

    path = make_checkpoint(tempfile.mkdtemp(prefix="tiny-gpt2-"), kind="gpt2")
    model = AutoModelForCausalLM.from_pretrained(path)
    seen = {}

    def record(module, inputs, output):
        seen.setdefault("lm_head_dtype", str(output.dtype).replace("torch.", ""))
        seen.setdefault("activation_device_type", output.device.type)

    model.lm_head.register_forward_hook(record)
    args = TrainingArguments(tempfile.mkdtemp(prefix="out-"), per_device_train_batch_size=8, num_train_epochs=4,
                             learning_rate=5e-3, logging_steps=4, report_to=[], save_strategy="no",
                             disable_tqdm=True, **{mode: True})
    trainer = Trainer(model=model, args=args, train_dataset=Patterns())
    trainer.train()
    accelerator = trainer.accelerator
    scaler = getattr(accelerator, "scaler", None)
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    result = {
        "args_device": str(args.device),
        "n_gpu": args.n_gpu,
        "accelerator_device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "native_amp": accelerator.native_amp,
        "scaler": None if scaler is None else type(scaler).__name__,
        "losses": losses,
        **seen,
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
