"""Area "nn": the nn pieces of CUDA training scripts run on the target.

One area, several modules, each holding real behaviour:

* ``parallel``: ``nn.DataParallel`` / ``DistributedDataParallel`` with CUDA device ids;
* ``normalization``: ``nn.SyncBatchNorm`` synchronising statistics across ranks;
* ``attention``: CUDA-only scaled-dot-product-attention backend selections;
* ``optim``: ``fused``/``foreach`` optimizer and gradient-clipping flags;
* ``jit``: TorchScript scripting, loading and builtins of redirected code.

``nn.init`` with a CUDA generator needs nothing here: ``torch.Generator("cuda")``
is a target generator (area "device"), and ``nn.init`` passes it through.
``apply_patches()`` applies the records of all modules as one area (all or none).
"""
from ...core.patch import REGISTRY
from . import attention, jit, normalization, optim, parallel

AREA = "nn"


def records():
    return [*parallel.records(), *normalization.records(), *attention.records(), *optim.records(), *jit.records()]


def apply_patches():
    """Apply the nn area (fenced: a second call changes nothing)."""
    return REGISTRY.apply_area(AREA, records())
