"""torch.accelerator and torch.get_device_module tell user code the torch.cuda story.

The oracle for each name is what torch.accelerator answers on a CUDA machine:
there it reaches torch.cuda's backend, so user code here must get exactly what
the (masqueraded) torch.cuda answers. torch's own modules keep the truth.
The cases are generated from the running torch's ``torch.accelerator.__all__``;
``test_every_public_name_has_a_case`` fails when a torch release adds a name.
"""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import porting
import torchdevice
import venvs
from conftest import clean_env, run_python
from torch_features import has, needs
from torchdevice.core.patch import REGISTRY
from torchdevice.ops.device import accelerator as acc

needs_accelerator = needs("torch.accelerator")
PROGRAM = Path(__file__).parent / "programs" / "accelerate_style_state.py"
CUDA = torch._C.device("cuda")
TARGET = torch._C.device("cpu")


@pytest.fixture
def two_gpus():
    """torchdevice active (strict, CPU target) with TORCHDEVICE_DEVICE_COUNT=2."""
    torchdevice.unpatch()
    torchdevice.patch(strict=True, device="cpu", device_count=2)
    yield
    torch.cuda.set_device(0)
    torchdevice.unpatch()


def as_torch(source, name="torch.nn.fake_module"):
    """Run ``source`` (defining ask()) as code of a module named ``name``; return ask()."""
    namespace = {"__name__": name, "torch": torch}
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace["ask"]()


# -- one case per public name: the CUDA machine's answer ---------------------------------------
def case_current_accelerator():
    assert torch.accelerator.current_accelerator() == CUDA
    assert torch.accelerator.current_accelerator().type == "cuda"
    assert torch.accelerator.current_accelerator(check_available=True) == CUDA
    assert torch.accelerator.current_accelerator(True).index is None  # as torch documents


def case_is_available():
    assert torch.accelerator.is_available() is True is torch.cuda.is_available()


def case_device_count():
    assert torch.accelerator.device_count() == torch.cuda.device_count() == 2


def case_current_device_index():
    torch.cuda.set_device(1)
    assert torch.accelerator.current_device_index() == 1
    torch.cuda.set_device(0)
    assert torch.accelerator.current_device_index() == 0


def case_current_device_idx():
    torch.cuda.set_device(1)
    with pytest.warns(FutureWarning, match="current_device_index"):
        assert torch.accelerator.current_device_idx() == 1


def _set_device_index_forms(function):
    for spec, index in ((1, 1), ("cuda:1", 1), (torch.device("cuda", 1), 1), (0, 0), ("cuda:0", 0)):
        function(spec)
        assert torch.cuda.current_device() == index, spec
    torch.cuda.set_device(1)
    function(torch.zeros(1, device="cuda").device)  # a tensor's device on the target: the selected index
    assert torch.cuda.current_device() == 1
    with pytest.raises(ValueError, match="specified index"):
        function("cuda")  # torch's rule: set_device_index needs an index
    with pytest.raises(ValueError, match="doesn't match the current accelerator cuda"):
        function("meta")


def case_set_device_index():
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # the new name does not warn
        _set_device_index_forms(torch.accelerator.set_device_index)


def case_set_device_idx():
    with pytest.warns(FutureWarning, match="set_device_index"):
        _set_device_index_forms(torch.accelerator.set_device_idx)


def case_device_index():
    torch.cuda.set_device(0)
    with torch.accelerator.device_index(1):
        assert torch.cuda.current_device() == 1 == torch.accelerator.current_device_index()
    assert torch.cuda.current_device() == 0
    with torch.accelerator.device_index(None):
        assert torch.cuda.current_device() == 0
    assert isinstance(torch.accelerator.device_index(0), torch.accelerator.device_index)


def case_synchronize():
    x = torch.ones(4, device="cuda") * 3
    assert torch.accelerator.synchronize() is None
    assert torch.accelerator.synchronize("cuda:1") is None
    assert torch.accelerator.synchronize(0) is None
    assert x.sum().item() == 12
    with pytest.raises(ValueError, match="doesn't match"):
        torch.accelerator.synchronize("meta")


def case_current_stream():
    assert torch.accelerator.current_stream() is torch.cuda.current_stream()
    assert isinstance(torch.accelerator.current_stream(), torch.Stream)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        assert torch.accelerator.current_stream() is side
    assert torch.accelerator.current_stream(1) is torch.cuda.current_stream(1)


def case_set_stream():
    side = torch.Stream("cuda")
    try:
        torch.accelerator.set_stream(side)
        assert torch.cuda.current_stream() is side
    finally:
        torch.cuda.set_stream(torch.cuda.default_stream())


def case_Graph():
    static = torch.zeros(3, device="cuda")
    graph = torch.accelerator.Graph()
    assert isinstance(graph, torch.accelerator.Graph)
    with torch.Stream("cuda"), graph:
        static += 1
    after_capture = static.clone()
    graph.replay()
    graph.replay()
    # The same program on torch.cuda's graph (the streams area's CUDA semantics) is the oracle.
    oracle_static = torch.zeros(3, device="cuda")
    oracle = torch.cuda.CUDAGraph()
    with torch.cuda.graph(oracle):
        oracle_static += 1
    oracle_after_capture = oracle_static.clone()
    oracle.replay()
    oracle.replay()
    assert torch.equal(after_capture, oracle_after_capture) and torch.equal(static, oracle_static)
    assert static.tolist() != after_capture.tolist(), "replay re-ran the captured work"
    assert isinstance(graph.pool(), tuple)


def case_get_device_capability():
    capability = torch.accelerator.get_device_capability()
    assert set(capability) == {"supported_dtypes"}
    dtypes = capability["supported_dtypes"]
    assert {torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.bool} <= dtypes
    for dtype in dtypes:  # each one really allocates and converts on the target
        torch.empty(2, dtype=dtype, device="cuda").to(torch.float32)
    assert torch.accelerator.get_device_capability("cuda:1") == capability
    with pytest.raises(Exception, match="[Ii]nvalid device"):
        torch.accelerator.get_device_capability(5)


def case_empty_cache():
    assert torch.accelerator.empty_cache() is None


def case_empty_host_cache():
    pinned = torch.ones(4).pin_memory()
    assert torch.accelerator.empty_host_cache() is None
    assert pinned.sum().item() == 4


def _memory_case(name, cuda_name):
    def case():
        keep = torch.ones(1 << 20, device="cuda")  # noqa: F841 (a live MiB on the target)
        ours, theirs = getattr(torch.accelerator, name), getattr(torch.cuda, cuda_name)
        if name == "get_memory_info":
            assert ours()[1] == theirs()[1] and ours(0)[1] == theirs(0)[1] > 0
            assert all(isinstance(v, int) for v in ours())
        elif name == "memory_stats":
            assert set(ours()) == set(theirs()) and ours(1).keys() == theirs(1).keys()
        elif name.startswith("reset_"):
            assert ours() is None and ours("cuda:0") is None
            if name == "reset_peak_memory_stats":
                del keep
                assert torch.accelerator.max_memory_allocated() == torch.cuda.max_memory_allocated()
        else:
            assert ours() == theirs() and ours(0) == theirs(0) and ours("cuda") == theirs("cuda")
            assert ours() > 0
    return case


CASES = {name: globals()[f"case_{name}"] for name in acc.behaviours(torchdevice.core.device.Target(
    "cpu", TARGET, True, "", True, False)) if f"case_{name}" in globals()}
CASES.update({name: _memory_case(name, cuda_name) for name, cuda_name in acc._MEMORY.items()})


@needs_accelerator
def test_every_public_name_has_a_case():
    missing = sorted(set(acc.public_names()) - set(CASES))
    assert not missing, f"torch.accelerator names without a case (and maybe without a behaviour): {missing}"
    assert acc.public_names() == sorted(torch.accelerator.__all__)


@needs_accelerator
def test_every_public_name_is_patched_with_a_record(two_gpus):
    applied = {(a.record.owner, a.record.name) for _, a in REGISTRY.applied_records()}
    for name in acc.public_names():
        assert ("torch.accelerator", name) in applied, name
        original = getattr(torch.accelerator, name).__wrapped__ if not isinstance(
            getattr(torch.accelerator, name), type) else None
        for sub in ("memory", "graphs"):
            module = getattr(torch.accelerator, sub, None)
            if module is not None and name in vars(module) and original is not None:
                assert getattr(module, name) is getattr(torch.accelerator, name), \
                    f"torch.accelerator.{sub}.{name} is the same object as torch.accelerator.{name}"


@needs_accelerator
@pytest.mark.parametrize("name", acc.public_names())
def test_public_name_answers_as_on_a_cuda_machine(two_gpus, name):
    CASES[name]()


# -- torch's own code keeps the truth ----------------------------------------------------------
TRUTH = """
def ask():
    return (torch.accelerator.current_accelerator(), torch.accelerator.current_accelerator(check_available=True),
            torch.accelerator.is_available(), torch.accelerator.device_count(), torch.get_device_module(),
            type(torch.accelerator.device_index(None)).__module__)
"""


def real_answers():
    return (None, None, False, 0, torch.cpu, "torch.accelerator")


@needs_accelerator
def test_torch_modules_see_the_truth(two_gpus):
    assert as_torch(TRUTH) == real_answers()
    assert as_torch(TRUTH, "torch.distributed.distributed_c10d") == real_answers()
    assert as_torch(TRUTH, "__main__")[:5] == (CUDA, CUDA, True, 2, torch.cuda), "user code sees the GPU"


@needs_accelerator
def test_truthful_modules_see_the_truth(unpatched):
    torchdevice.patch(strict=True, device="cpu", truthful_modules="mylib")
    assert as_torch(TRUTH, "mylib.core") == real_answers()
    assert as_torch(TRUTH, "otherlib.core")[0] == CUDA


@needs_accelerator
def test_torch_code_paths_that_ask_torch_accelerator_do_not_try_cuda(two_gpus):
    # Optimizer.step's graph-capture health check asks current_accelerator(check_available=True)
    # and, on "cuda", current_stream().is_capturing(): the real one raises on a CPU build.
    model = torch.nn.Linear(4, 1).to("cuda")
    for optimizer in (torch.optim.Adam(model.parameters()), torch.optim.AdamW(model.parameters(), capturable=False)):
        model(torch.randn(2, 4, device="cuda")).sum().backward()
        optimizer.step()
    # DataParallel's scatter asks torch.accelerator for a copy stream: none for a CPU tensor's target.
    from torch.nn.parallel import _functions

    assert _functions._get_stream(torch._C.device("cuda", 0)) is None
    # torch.save of a tensor on the target (serialization asks current_accelerator for pinned copies).
    import io

    buffer = io.BytesIO()
    torch.save(torch.ones(3, device="cuda"), buffer)
    buffer.seek(0)
    assert torch.load(buffer).sum().item() == 3


def test_get_device_module_cuda_forms(patched):
    if not has("torch.get_device_module"):
        pytest.skip(f"torch.get_device_module not in torch {torch.__version__}")
    for spec in ("cuda", "cuda:0", torch.device("cuda"), torch.device("cuda", 1)):
        assert torch.get_device_module(spec) is torch.cuda, spec
    assert torch.get_device_module("cpu") is torch.cpu
    assert as_torch("def ask():\n    return torch.get_device_module('cuda')\n") is torch.cuda, \
        "torch's fork_rng reaches the target generator through torch.cuda"


# -- switched off, undone, absent --------------------------------------------------------------
@needs_accelerator
def test_masquerade_off_leaves_torch_accelerator_untouched(unpatched):
    before = {name: getattr(torch.accelerator, name) for name in acc.public_names()}
    torchdevice.patch(strict=True, device="cpu", masquerade=False)
    assert {name: getattr(torch.accelerator, name) for name in acc.public_names()} == before
    assert torch.accelerator.current_accelerator() is None and torch.cuda.is_available() is False


@needs_accelerator
def test_unpatch_restores_every_name(unpatched):
    owners = [torch.accelerator] + [getattr(torch.accelerator, s) for s in ("memory", "graphs")
                                    if hasattr(torch.accelerator, s)]
    before = [dict(vars(owner)) for owner in owners]
    module = torch.get_device_module
    torchdevice.patch(strict=True, device="cpu")
    assert torch.accelerator.current_accelerator() == CUDA
    torchdevice.unpatch()
    for owner, snapshot in zip(owners, before):
        now = vars(owner)
        assert all(now.get(name) is value for name, value in snapshot.items()), owner.__name__
    assert torch.get_device_module is module
    assert torch.accelerator.current_accelerator() is None


def test_without_torch_accelerator_the_records_are_skipped_with_the_reason(patched):
    if has("torch.accelerator"):
        pytest.skip(f"torch {torch.__version__} has torch.accelerator (checked on torch < 2.6)")
    skipped = dict((row["target"], row["reason"]) for row in patched["areas"]["cuda"]["skipped"])
    served = sorted(acc.behaviours(torchdevice.core.device.current()))
    for name in served:
        assert "torch.accelerator does not exist" in skipped[f"torch.accelerator.{name}"], name


# -- accelerate's own decisions, made with the same torch calls, in real processes -------------
@pytest.fixture(scope="module")
def autoload_python(tmp_path_factory):
    """A python in which a plain ``import torch`` activates torchdevice (the installed .pth)."""
    probe = run_python("import torch; print(torch.device is not torch._C.device)")
    if probe.returncode == 0 and probe.stdout.strip() == "True":
        return sys.executable
    return str(venvs.create(tmp_path_factory.mktemp("acc") / "venv", editable=True))


def check_state(result, mode, device, distributed_type, world, rank):
    assert result["device"] == device and result["distributed_type"] == distributed_type
    assert result["num_processes"] == world and result["process_index"] == rank
    assert result["native_amp"] is True and result["autocast_on"] is True
    assert result["out_dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[mode], "autocast ran the model"
    assert result["scaler"] == ("GradScaler" if mode == "fp16" else None)
    assert result["scaler_enabled"] is (True if mode == "fp16" else None)
    assert result["x_device_type"] == "cpu", "the batches really live on the target"
    assert result["memory_total"] > result["memory_free"] > 0 and result["allocated"] > 0
    assert result["rng_state_bytes"] > 0 and result["losses"][-1] < result["losses"][0]


@needs_accelerator
@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_accelerate_style_single_process(autoload_python, tmp_path, mode):
    proc = subprocess.run([autoload_python, str(PROGRAM), str(tmp_path), mode], env=clean_env(TORCHDEVICE_PRECISION="keep"),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    check_state(json.loads((tmp_path / "rank0.json").read_text()), mode, "cuda", "NO", 1, 0)


@needs_accelerator
def test_accelerate_style_two_processes(autoload_python, tmp_path):
    result = porting.torchrun(autoload_python, PROGRAM, 2, str(tmp_path), "fp16",
                              env=clean_env(OMP_NUM_THREADS="1", TORCHDEVICE_DEVICE_COUNT="2", TORCHDEVICE_PRECISION="keep"), timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank, state in enumerate(ranks):
        check_state(state, "fp16", f"cuda:{rank}", "MULTI_GPU", 2, rank)
        assert state["backend"] == "nccl" and state["current_device_index"] == rank
    assert ranks[0]["params"] == ranks[1]["params"], "DDP kept the ranks in sync"
    assert ranks[0]["losses"] != ranks[1]["losses"], "each rank trained on its own data"
