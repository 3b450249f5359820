"""transformers ``pipeline(..., device=0)`` / ``device="cuda"`` as its documentation shows.

    python transformers_pipeline.py DEVICE   # 0 or cuda or cuda:0
"""
import json
import sys
import tempfile

from transformers import pipeline

from hf_tiny import make_checkpoint


def main():
    device = sys.argv[1]
    device = int(device) if device.isdigit() else device
    path = make_checkpoint(tempfile.mkdtemp(prefix="tiny-gpt2-"), kind="gpt2")
    generator = pipeline("text-generation", model=path, device=device)
    prompt = "w5 w6 w7"
    out = generator(prompt, max_new_tokens=5, min_new_tokens=5, do_sample=False, return_full_text=False)
    text = out[0]["generated_text"]
    result = {
        "pipeline_device": str(generator.device),
        "model_device": str(generator.model.device),
        "prompt": prompt,
        "generated_text": text,
        "new_words": len(text.split()),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
