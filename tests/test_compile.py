"""torch.compile and TorchScript of redirected CUDA code (CPU target)."""
import io
import json
import pathlib
import warnings

import pytest
import torch
from torch import nn

import torch_features
from conftest import clean_env, run_python
from torchdevice.ops.nn import jit


@pytest.fixture
def dynamo(patched):
    import torch._dynamo

    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


# Compiled functions that use the CUDA API inside; each returns a value that
# differs when the masquerade or the device mapping answers wrongly.
DYNAMO_PROGRAM = """
import json, sys, torch
if sys.argv[1] == "dynamo-first":
    import torch._dynamo
import torchdevice
torchdevice.patch(strict=True, device="cpu", precision="keep")  # the requested dtypes (faithful mode)
import torch._dynamo
from torch._dynamo.utils import counters

def uses_cuda_api(x):
    d = torch.device("cuda")
    if torch.cuda.is_available():
        y = x.to(d) + torch.ones(2, device="cuda")
    else:
        y = x - 100
    return y * 2, isinstance(d, torch.device)

def uses_autocast(x):
    with torch.autocast("cuda"):
        return x @ x, torch.is_autocast_enabled()

@torch.autocast("cuda", dtype=torch.bfloat16)
def decorated(x):
    return x @ x, torch.get_autocast_gpu_dtype()

out = {}
for fn, arg in ((uses_cuda_api, torch.ones(2)), (uses_autocast, torch.ones(3, 3)), (decorated, torch.ones(2, 2))):
    torch._dynamo.reset(); counters.clear()
    eager = fn(arg)
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)(arg)
    out[fn.__name__] = {
        "eager": [str(v) if not isinstance(v, torch.Tensor) else [v.tolist(), str(v.dtype)] for v in eager],
        "compiled": [str(v) if not isinstance(v, torch.Tensor) else [v.tolist(), str(v.dtype)] for v in compiled],
        "graph_breaks": sum(counters["graph_break"].values()),
    }
print(json.dumps(out))
"""


@pytest.mark.parametrize("order", ["patch-first", pytest.param("dynamo-first", marks=pytest.mark.skipif(
    (pathlib.Path(torch.__file__).parent / "_dynamo" / "allowed_functions.py").exists(),
    reason="this torch's dynamo fixes which objects are torch's (torch._dynamo.allowed_functions) when "
           "torch._dynamo is imported: torchdevice.patch() must come first there, as the autoload does"))])
def test_dynamo_traces_cuda_api_without_graph_breaks(order):
    result = run_python(DYNAMO_PROGRAM, env=clean_env(TORCHDEVICE_DISABLE="1"), args=(order,))
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    api = out["uses_cuda_api"]
    assert api["compiled"] == api["eager"] == [[[4.0, 4.0], "torch.float32"], "True"], "CUDA branch taken"
    assert api["graph_breaks"] == 0
    autocast = out["uses_autocast"]
    assert autocast["compiled"] == autocast["eager"]
    assert autocast["compiled"][0][1] == "torch.float16" and autocast["compiled"][1] == "True"
    assert autocast["graph_breaks"] == 0
    decorated = out["decorated"]
    assert decorated["compiled"] == decorated["eager"] == [[[[2.0, 2.0], [2.0, 2.0]], "torch.bfloat16"],
                                                           "torch.bfloat16"]
    assert decorated["graph_breaks"] == 0


def test_torch_compile_inductor_matches_eager(dynamo):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 4)).cuda()
    x = torch.randn(5, 8, device="cuda")
    eager = model(x)
    compiled = torch.compile(model)
    out = compiled(x)
    assert out.device.type == "cpu"
    assert torch.allclose(out, eager, atol=1e-5)
    out.sum().backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


@torch_features.needs("torch.nn.attention")
def test_compiled_function_with_sdpa_kernel_and_autocast(dynamo):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def attend(q):
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return torch.nn.functional.scaled_dot_product_attention(q, q, q)

    q = torch.randn(1, 2, 4, 8, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = attend(q)
        compiled = torch.compile(attend, backend="aot_eager")(q)
    from torchdevice.ops import precision

    runs = precision.current().decide(torch.bfloat16)[0] or torch.float32  # what the precision policy runs
    assert compiled.dtype == eager.dtype == runs
    assert torch.allclose(compiled.float(), eager.float(), atol=1e-2)


# -- TorchScript ---------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 2)

    def forward(self, x):
        if x.sum() > -1000:
            x = x.cuda()
        return self.linear(x.to("cuda")) + torch.ones(2, device="cuda")


def cuda_function(x):
    d = torch.device("cuda:0")
    return x.to(d) * 2 + torch.zeros(2, device="cuda")


def test_script_and_trace_of_cuda_code(patched):
    torch.manual_seed(0)
    net = Net().cuda()
    x = torch.randn(4, 3, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
        traced = torch.jit.trace(net, x)
        function = torch.jit.script(cuda_function)
    assert torch.allclose(scripted(x), net(x)) and torch.allclose(traced(x), net(x))
    assert torch.equal(function(torch.ones(2)), torch.full((2,), 2.0))
    assert 'device("cuda' not in scripted.code and 'device("cuda' not in function.code


def test_script_graph_rewrite_for_a_non_cpu_target():
    # The rewrite for MPS, checked with the meta device standing in for the target.
    def fresh(x):  # a new function object: TorchScript caches compiled functions per object
        return x.cuda() + torch.zeros(2, device="cuda:0")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        function = torch.jit.script(fresh)
    jit._rewrite_graph(function.graph, torch.device("meta"))
    assert function(torch.ones(2)).device.type == "meta"
    assert "aten::cuda" not in str(function.graph)


class SavedOnGpu(Net):
    """Its own class: TorchScript caches compiled code per class."""


def test_jit_load_of_a_model_scripted_for_cuda(unpatched):
    # Scripted without torchdevice, the graph holds CUDA device constants and
    # aten::cuda, as a model scripted and saved on a GPU machine does.
    torch.manual_seed(0)
    net = SavedOnGpu()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        scripted = torch.jit.script(net)
        assert 'device("cuda")' in scripted.code
        buffer = io.BytesIO()
        torch.jit.save(scripted, buffer)
    import torchdevice

    torchdevice.patch(strict=True, device="cpu")
    buffer.seek(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        loaded = torch.jit.load(buffer)
    x = torch.randn(2, 3)
    assert 'device("cuda")' not in loaded.code
    expected = net.linear(x) + torch.ones(2)
    assert torch.allclose(loaded(x), expected)


def test_scripted_wrapped_builtins_compile(patched):
    import torch.jit._builtins as builtins

    table = builtins._get_builtin_table()
    assert table.get(id(torch.zeros)) == "aten::zeros", "the wrapper is known to TorchScript"


def test_fx_code_generation_with_device_constants(patched):
    # torch.fx writes device constants as device(...) and imports that name only
    # for the type it knows: the stand-in must compare equal to torch's type.
    class Adds(nn.Module):
        def forward(self, x):
            return x.to(torch.device("cuda")) + 1

    traced = torch.fx.symbolic_trace(Adds())
    assert "device(type=" in traced.code
    assert torch.equal(traced(torch.zeros(2)), torch.ones(2))  # the generated code runs
    assert torch.device == torch._C.device and hash(torch.device) == hash(torch._C.device)
    assert torch.device in {torch._C.device} and type(torch.zeros(1).device) in (torch.device,)
