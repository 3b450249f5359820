"""Area "distributed": real torchrun jobs on 127.0.0.1 running CUDA/NCCL programs on gloo (CPU target)."""
import json
import sys
from pathlib import Path

import pytest
import torch

from conftest import clean_env, run_python
import porting
import venvs
from torchdevice.ops import distributed

PROGRAMS = Path(__file__).parent / "programs"
# The longest job here takes 7 s alone (torch 2.13 CPU, 2 cores); gloo's rare teardown hang
# (a rank left in its last barrier after the peer exited) is killed and retried after this.
TIMEOUT = 120


@pytest.fixture(scope="session")
def autoload_python(tmp_path_factory):
    """A python in which a plain ``import torch`` activates torchdevice (the installed .pth)."""
    probe = run_python("import torch; print(torch.device is not torch._C.device)")
    if probe.returncode == 0 and probe.stdout.strip() == "True":
        return sys.executable
    return str(venvs.create(tmp_path_factory.mktemp("dist") / "venv", editable=True))


def launch(python, program, nproc, out_dir, env):
    """torchrun on loopback (porting.torchrun: a job of its own, killed whole on timeout, run once
    more on a new port when gloo aborts a rank at exit); the per-rank JSON the program wrote."""
    result = porting.torchrun(python, program, nproc, out_dir, env=env, timeout=TIMEOUT)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout}\n{result.stderr}"
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(nproc)], result


def torchrun(python, program, nproc, out_dir):
    """Run ``program`` under ``torchrun --nproc_per_node=nproc`` on loopback; return per-rank JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    return launch(python, PROGRAMS / program, nproc, out_dir, clean_env(OMP_NUM_THREADS="1"))


def test_unmodified_nccl_ddp_script_trains_like_one_process(autoload_python, tmp_path):
    two, result = torchrun(autoload_python, "ddp_train_cuda.py", 2, tmp_path / "two")
    one, _ = torchrun(autoload_python, "ddp_train_cuda.py", 1, tmp_path / "one")
    rank0, rank1 = two
    assert rank0["world"] == 2 and rank0["device"] == "cpu"
    assert rank0["backend"] == "nccl", "user code is told the backend it asked for"
    assert rank0["grads"] == rank1["grads"], "DDP all-reduced the gradients: identical on both ranks"
    assert rank0["params"] == rank1["params"]
    assert rank0["full_loss"] == rank1["full_loss"] == pytest.approx(rank0["mean_loss"])
    single = one[0]
    assert single["world"] == 1
    assert rank0["full_loss"] == pytest.approx(single["full_loss"], rel=1e-5, abs=1e-7), \
        "two ranks with half batches end where one process with the full batches ends"
    flat = lambda params: torch.cat([torch.tensor(p).flatten() for p in params])  # noqa: E731
    assert torch.allclose(flat(rank0["params"]), flat(single["params"]), atol=1e-5)
    assert single["full_loss"] < single["initial_loss"] / 5, "it really trained"
    assert "Traceback" not in result.stderr


def test_distributed_features_on_two_ranks(autoload_python, tmp_path):
    (rank0, rank1), _ = torchrun(autoload_python, "dist_features.py", 2, tmp_path)
    for out in (rank0, rank1):
        assert out["all_reduce"] == [3.0, 3.0, 3.0]
        assert out["broadcast"] == [15.0, 15.0]
        assert out["all_gather"] == [[0.0, 0.0], [1.0, 1.0]]
        assert out["tensor_device"] == "cpu"
        assert out["user_backend"] == "cuda:nccl,cpu:gloo" and out["user_nccl"] is True
        # torch's own modules see the truth: gloo runs, and NCCL is there only in a CUDA build
        assert out["torch_backend"] == "cpu:gloo", "torch sees the truth"
        assert out["torch_nccl"] is torch.distributed.is_nccl_available()
        assert out["subgroup"] == ["nccl", 2.0]
        errors = out["sync_batch_norm"]
        assert errors.pop("batches_tracked") == 2
        assert max(errors.values()) < 1e-4, errors
        assert out["fsdp"][:2] == ["cpu", True], out["fsdp"]
        assert out["mesh"] == ["cpu", 2]
    assert sorted(rank0["sampler"] + rank1["sampler"]) == sorted(list(range(11)) + [rank0["sampler"][0]]), \
        "DistributedSampler splits the (padded) index set between the ranks"
    assert rank0["sampler"] != rank1["sampler"]


# -- unit checks --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("asked, mapped", [
    ("nccl", ("gloo", True)),
    ("NCCL", ("gloo", True)),
    ("gloo", ("gloo", False)),
    ("cuda:nccl,cpu:gloo", ("cpu:gloo", True)),
    ("cpu:gloo,cuda:nccl", ("cpu:gloo", True)),
    ("cuda:nccl", ("cpu:gloo", True)),
    ("mpi", ("mpi", False)),
    (None, (None, False)),
])
def test_backend_mapping(asked, mapped):
    assert distributed._gloo_backend(asked) == mapped


STAGING = """
import functools, json, os, sys, torch, torch.distributed as dist
from torchdevice.ops.distributed import _STAGED, _staged
dist.init_process_group("gloo")
rank = dist.get_rank()
seen = []
def spy(original):
    @functools.wraps(original)
    def collective(*args, **kwargs):
        seen.append(args[0])
        return original(*args, **kwargs)
    return collective
# The CPU stands in for MPS: its tensors travel as copies and come back.
reduce = _staged("cpu", *_STAGED["all_reduce"])(spy(dist.all_reduce))
gather = _staged("cpu", *_STAGED["all_gather"])(spy(dist.all_gather))
t = torch.full((2,), float(rank + 1))
reduce(t)
work = reduce(t, async_op=True)
out = [torch.zeros(1), torch.zeros(1)]
gather(out, torch.full((1,), float(rank)))
result = {"reduced": t.tolist(), "gathered": [o.item() for o in out], "copies": all(s is not t for s in seen[:2]),
          "work_done": work.is_completed()}
with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as f:
    json.dump(result, f)
dist.barrier()
dist.destroy_process_group()
"""


def test_staged_collectives_copy_through_the_cpu(tmp_path):
    program = tmp_path / "staging.py"
    program.write_text(STAGING)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    ranks, _ = launch(sys.executable, program, 2, out_dir, clean_env(TORCHDEVICE_DISABLE="1", OMP_NUM_THREADS="1"))
    for out in ranks:
        assert out == {"reduced": [6.0, 6.0], "gathered": [0.0, 1.0], "copies": True, "work_done": True}


def test_masquerade_off_leaves_backend_queries_truthful(unpatched):
    import torch.distributed as dist

    import torchdevice
    from torchdevice.core.patch import REGISTRY

    original, truth = dist.get_backend, dist.is_nccl_available()  # True on CUDA builds, False on CPU builds
    torchdevice.patch(strict=True, device="cpu", masquerade=False)
    assert dist.get_backend is original and dist.is_nccl_available() is truth
    assert REGISTRY.is_patched("torch.distributed", "init_process_group"), "NCCL still runs on gloo"
    torchdevice.unpatch()
    torchdevice.patch(strict=True, device="cpu")
    assert dist.is_nccl_available() is True, "user code (this test) sees the masquerade"
    assert REGISTRY.original("torch.distributed", "is_nccl_available")() is truth


def test_fsdp_device_id_names_the_target(patched):
    from torchdevice.core.device import current

    seen = []

    def original(self, module, process_group=None, sharding_strategy=None, cpu_offload=None,
                 auto_wrap_policy=None, backward_prefetch=None, mixed_precision=None, ignored_modules=None,
                 param_init_fn=None, device_id=None, sync_module_states=False):
        seen.append(device_id)

    init = distributed._fsdp_init(current())(original)
    for spec in (0, 3, torch._C.device("cuda", 1), "cuda", torch.device("cpu")):
        init(object(), None, device_id=spec)
    init(object(), None, None, None, None, None, None, None, None, None, 2)  # positional device_id
    init(object(), None)
    assert seen == [torch.device("cpu")] * 6 + [None]


# -- NCCL's semantics on the rewritten groups: the whole matrix on two ranks ---------------------------------
def _matrix_program():
    import importlib.util

    spec = importlib.util.spec_from_file_location("dist_collectives", PROGRAMS / "dist_collectives.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_collective_keeps_nccl_semantics_on_two_ranks(autoload_python, tmp_path):
    """Every cell (collective x ReduceOp x dtype x async_op) of tests/programs/dist_collectives.py
    equals NCCL's result computed locally from the known inputs, or raises NCCL's error."""
    ranks, _ = torchrun(autoload_python, "dist_collectives.py", 2, tmp_path)
    matrix = _matrix_program()
    expected = {cell for cell, _, _ in matrix.cells()}
    for out in ranks:
        assert out["backend"] == "nccl" and out["world"] == 2
        assert set(out["cells"]) == expected, "the ranks ran the whole matrix"
        wrong = {cell: result for cell, result in out["cells"].items() if result != "ok"}
        assert not wrong, f"rank {out['rank']}: {len(wrong)} of {len(expected)} cells differ from NCCL: " + \
            "\n".join(f"{c}: {r}" for c, r in list(wrong.items())[:20])
    assert len(expected) > 1000


# What the matrix calls for each of its collectives (the cells that exercise two functions name both).
_MATRIX_FUNCTIONS = {
    "send_recv": ("send", "recv", "isend", "irecv"),
    "send_recv_object_list": ("send_object_list", "recv_object_list"),
    "all_gather_into_tensor_stacked": ("all_gather_into_tensor",),
    "all_to_all_single_uneven": ("all_to_all_single",),
}
# Group management, not collectives (they take a group, move no data).
_MANAGEMENT = ("get_", "new_", "init_", "destroy_", "is_", "split_group", "shrink_group")
# Offered by torch for any backend, but not by NCCL (none today: all_gather_coalesced, refused by
# older NCCL backends, is implemented by torch's current one and is in the matrix).
_NOT_NCCL = set()


def _public_collectives():
    """torch.distributed's public functions that communicate over a group: they take a group
    (``group``, ``group_src``/``group_dst``) or a list of P2POps, and do not manage groups."""
    import inspect as _inspect

    import torch.distributed as dist

    found = set()
    for name in dir(dist):
        function = getattr(dist, name)
        if name.startswith("_") or name.startswith(_MANAGEMENT) or not callable(function) or _inspect.isclass(function):
            continue
        try:
            parameters = _inspect.signature(function).parameters
        except (TypeError, ValueError):
            continue
        if any(p in parameters for p in ("group", "group_src", "group_dst", "p2p_op_list")):
            found.add(name)
    return found


def test_the_matrix_covers_every_collective_nccl_offers():
    matrix = _matrix_program()
    names = (*matrix.REDUCING, *matrix.MOVING, *matrix.PLAIN)
    covered = {f for name in names for f in _MATRIX_FUNCTIONS.get(name, (name,))}
    public = _public_collectives()
    assert {"all_reduce", "broadcast", "batch_isend_irecv", "monitored_barrier", "gather_object"} <= public, \
        "the rule finds torch's collectives"
    missing = public - covered - _NOT_NCCL
    assert not missing, f"collectives of torch.distributed missing from the matrix: {sorted(missing)}"
    assert set(distributed._collectives.COMPOSED) <= covered, "every composition is exercised"
    reduce_ops = {op for op in dist_reduce_op_names()}
    assert reduce_ops <= {op.replace("_TENSOR", "") for op in matrix.OPS}, "every ReduceOp is in the matrix"


def dist_reduce_op_names():
    import torch.distributed as dist

    return set(dist.ReduceOp.RedOpType.__members__) - {"UNUSED"}


def test_nccl_errors_are_for_user_code_only(patched):
    """torch's own code on a rewritten group keeps gloo's behaviour where NCCL would refuse."""
    from torchdevice.ops import collectives

    calls = []

    def original(tensor, op=None, group=None, async_op=False):
        calls.append(op)
        return "gloo's answer"

    import torch.distributed as dist

    arguments = {"tensor": torch.ones(2, dtype=torch.int16), "op": dist.ReduceOp.SUM, "group": None,
                 "async_op": False}
    with pytest.raises(TypeError, match="not supported for NCCL process group: Short"):
        collectives.all_reduce(dict(arguments), original, True)
    assert collectives.all_reduce(dict(arguments), original, False) == "gloo's answer"
    arguments.update(tensor=torch.ones(2, dtype=torch.int32), op=dist.ReduceOp.BAND)
    with pytest.raises(ValueError, match="Cannot use ReduceOp.BAND with NCCL"):
        collectives.all_reduce(dict(arguments), original, True)
    assert collectives.all_reduce(dict(arguments), original, False) == "gloo's answer"
    assert calls == [dist.ReduceOp.SUM, dist.ReduceOp.BAND]
    with pytest.raises(ValueError, match="monitored_barrier is only implemented for GLOO"):
        collectives.monitored_barrier({}, original, True)
