"""accelerate's big-model planning on a GPU machine: ``get_max_memory``,
``infer_auto_device_map`` (which reads torch.cuda's memory APIs) and
``dispatch_model``, as its documentation shows.
"""
import json

import torch
from accelerate import dispatch_model, infer_auto_device_map
from accelerate.utils import get_balanced_memory, get_max_memory


def main():
    torch.manual_seed(0)
    model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(8)])
    layer_bytes = 256 * 257 * 4
    max_memory = get_max_memory()
    auto_map = infer_auto_device_map(model)
    balanced = get_balanced_memory(model)
    # A GPU budget of three layers: the planner puts three on GPU 0 and the rest on the CPU.
    split_map = infer_auto_device_map(model, max_memory={0: 3 * layer_bytes + 1000, "cpu": 10 ** 9})
    x = torch.randn(4, 256)
    expected = model(x)
    dispatched = dispatch_model(model, device_map=split_map)
    out = dispatched(x.to("cuda"))
    result = {
        "max_memory": {str(k): v for k, v in max_memory.items()},
        "auto_map": {k: str(v) for k, v in auto_map.items()},
        "balanced_keys": sorted(str(k) for k in balanced),
        "split_map": {k: str(v) for k, v in split_map.items()},
        "dispatch_matches": bool(torch.allclose(out.cpu(), expected, atol=1e-5)),
    }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
