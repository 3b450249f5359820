"""transformers inference as its documentation shows for a GPU user:
``from_pretrained(path, device_map="auto", dtype=torch.float16)`` then ``generate``.

    python transformers_generate.py DTYPE_KEYWORD   # dtype (current docs) or torch_dtype (older docs)
"""
import json
import sys
import tempfile

import torch
import transformers.modeling_utils
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_tiny import make_checkpoint


def watch_device_map(planned):
    """Record the device map transformers computes for device_map="auto" (since v5 a
    single-device map loads the weights there and sets no ``hf_device_map``)."""
    original = getattr(transformers.modeling_utils, "_get_device_map", None)
    if original is None:
        return

    def _get_device_map(*args, **kwargs):
        result = original(*args, **kwargs)
        planned.update({k: str(v) for k, v in result.items()})
        return result
    transformers.modeling_utils._get_device_map = _get_device_map


def main():
    planned = {}
    watch_device_map(planned)
    keyword = sys.argv[1] if len(sys.argv) > 1 else "dtype"
    path = make_checkpoint(tempfile.mkdtemp(prefix="tiny-llama-"))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, device_map="auto", **{keyword: torch.float16})
    inputs = tokenizer("w1 w2 w3 w4", return_tensors="pt").to("cuda")
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=6, do_sample=False, min_new_tokens=6)
    prompt_len = inputs["input_ids"].shape[1]
    result = {
        "hf_device_map": {k: str(v) for k, v in getattr(model, "hf_device_map", {}).items()},
        "planned_device_map": planned,
        "model_device": str(model.device),
        "param_dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "input_device_type": inputs["input_ids"].device.type,
        "prompt_tokens": prompt_len,
        "new_tokens": int(output.shape[1] - prompt_len),
        "text": tokenizer.decode(output[0, prompt_len:], skip_special_tokens=True),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
