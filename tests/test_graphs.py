"""CUDA graphs on the CPU target: capture records, replay re-runs on new static-input data."""
import copy

import pytest
import torch

import torchdevice
from torch_features import needs
from torchdevice.ops.device.errors import TargetUnsupportedError


def test_replay_runs_captured_work_on_new_static_inputs(patched):
    static_x = torch.zeros(3, 4, device="cuda")
    weight = torch.randn(4, 2, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = torch.relu(static_x @ weight).sum(dim=0) * 2 + 1
    version = static_out._version
    for _ in range(3):
        data = torch.randn(3, 4)
        static_x.copy_(data)
        g.replay()
        assert torch.allclose(static_out, torch.relu(data @ weight).sum(dim=0) * 2 + 1)
    assert static_out._version == version, "replay writes below autograd, like a GPU replay"


def test_capture_changes_nothing_and_replay_mutates(patched):
    counter = torch.zeros(2, device="cuda")
    target = torch.full((2,), 5.0, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        counter.add_(1)
        target.copy_(counter * 10)
    assert counter.tolist() == [0.0, 0.0] and target.tolist() == [5.0, 5.0], "capture launches nothing, as on CUDA"
    g.replay()
    assert counter.tolist() == [1.0, 1.0] and target.tolist() == [10.0, 10.0]
    g.replay()
    assert counter.tolist() == [2.0, 2.0] and target.tolist() == [20.0, 20.0]


def _net():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                               torch.nn.Linear(8, 2))


def test_whole_training_step_matches_eager(patched):
    torch.manual_seed(0)
    model = _net().cuda()
    ref = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    loss_fn = torch.nn.MSELoss()
    static_x, static_y = torch.randn(16, 4, device="cuda"), torch.randn(16, 2, device="cuda")
    for m, o in ((model, opt), (ref, ref_opt)):  # warm-up step (creates momentum buffers), as CUDA docs advise
        o.zero_grad(set_to_none=True)
        loss_fn(m(static_x), static_y).backward()
        o.step()
    before = [p.detach().clone() for p in model.parameters()]
    g = torch.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with torch.cuda.graph(g):
        static_loss = loss_fn(model(static_x), static_y)
        static_loss.backward()
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    for _ in range(3):
        x, y = torch.randn(16, 4), torch.randn(16, 2)
        static_x.copy_(x)
        static_y.copy_(y)
        g.replay()
        ref_opt.zero_grad(set_to_none=True)
        loss = loss_fn(ref(x), y)
        loss.backward()
        ref_opt.step()
        assert static_loss.item() == pytest.approx(loss.item(), rel=1e-6)
        for a, b in zip(model.parameters(), ref.parameters()):
            assert torch.allclose(a, b, atol=1e-6)
        assert torch.allclose(model[1].running_mean, ref[1].running_mean)
        assert int(model[1].num_batches_tracked) == int(ref[1].num_batches_tracked)


def test_random_ops_draw_fresh_numbers_per_replay(patched):
    static_x = torch.ones(256, device="cuda")
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = torch.nn.functional.dropout(static_x, p=0.5, training=True)
    torch.cuda.manual_seed(1)
    g.replay()
    first = out.clone()
    g.replay()
    assert not torch.equal(first, out)
    torch.cuda.manual_seed(1)
    g.replay()
    assert torch.equal(first, out), "replay draws from the target generator: seeding reproduces it"


def test_capture_state_and_side_stream(patched):
    assert torch.cuda.is_current_stream_capturing() is False
    side = torch.cuda.Stream()
    g = torch.cuda.CUDAGraph()
    seen = {}
    with torch.cuda.graph(g, stream=side):
        seen["capturing"] = torch.cuda.is_current_stream_capturing()
        seen["stream"] = torch.cuda.current_stream()
    assert seen == {"capturing": True, "stream": side}
    assert torch.cuda.is_current_stream_capturing() is False
    assert torch.cuda.current_stream() == torch.cuda.default_stream()
    with torch.cuda.graph(torch.cuda.CUDAGraph()):
        assert torch.cuda.current_stream() is torch.cuda.graph.default_capture_stream


def test_host_sync_inside_capture_is_an_error(patched):
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    x = torch.randn(5, device="cuda")
    g = torch.cuda.CUDAGraph()
    with pytest.raises(RuntimeError) as info:
        with torch.cuda.graph(g):
            x.sum().item()
    message = str(info.value)
    assert "_local_scalar_dense" in message and "not permitted when stream is capturing" in message
    assert "cpu target" in message and "move it out of the captured region" in message
    with pytest.raises(RuntimeError, match="nonzero"):
        with torch.cuda.graph(torch.cuda.CUDAGraph()):
            torch.nonzero(x)
    assert torch.cuda.is_current_stream_capturing() is False
    assert _get_current_dispatch_mode_stack() == []
    with pytest.raises(RuntimeError, match="no finished capture to replay"):
        g.replay()


def test_manual_capture_api_and_pools(patched):
    x = torch.ones(2, device="cuda")
    g = torch.cuda.CUDAGraph()
    pool = torch.cuda.graph_pool_handle()
    assert isinstance(pool, tuple) and pool != torch.cuda.graph_pool_handle()
    g.capture_begin(pool=pool)
    with pytest.raises(RuntimeError, match="already underway"):
        torch.cuda.CUDAGraph().capture_begin()
    y = x * 3
    g.capture_end()
    g.instantiate()
    assert g.pool() == pool
    x.fill_(2)
    g.replay()
    assert y.tolist() == [6.0, 6.0]
    g.reset()
    with pytest.raises(RuntimeError, match="no finished capture"):
        g.replay()
    with pytest.raises(RuntimeError, match="no capture is underway"):
        g.capture_end()


def test_debug_dump_lists_recorded_ops(patched, tmp_path):
    x = torch.ones(2, device="cuda")
    g = torch.cuda.CUDAGraph()
    g.enable_debug_mode()
    with torch.cuda.graph(g):
        (x * 2).add_(1)
    path = tmp_path / "graph.txt"
    g.debug_dump(str(path))
    assert path.read_text().split() == ["aten.mul.Tensor", "aten.add_.Tensor"]


def test_raw_graph_handles_are_clear_errors(patched):
    g = torch.cuda.CUDAGraph(keep_graph=True)
    for name in ("raw_cuda_graph", "raw_cuda_graph_exec", "get_graph_data"):
        with pytest.raises(RuntimeError) as info:
            getattr(g, name)()
        message = str(info.value)
        assert message.startswith(f"torch.cuda.CUDAGraph.{name}:") and "cpu target" in message
        assert "use capture and replay() only" in message


def _grads(module):
    return [p.grad.clone() for p in module.parameters()]


def test_make_graphed_callables_match_eager_outputs_and_grads(patched):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()).cuda()
    reference = copy.deepcopy(module)

    def function(a, b):
        return (a * b).sin().sum(dim=1)

    sample = (torch.randn(4, 5, device="cuda", requires_grad=True),)
    graphed = torch.cuda.make_graphed_callables(module, sample)
    assert graphed is module and "forward" not in vars(graphed), "the module runs its own forward, eagerly"
    graphed_fn = torch.cuda.make_graphed_callables(function, (torch.randn(2, 2), torch.randn(2, 2)))

    x = torch.randn(4, 5, device="cuda", requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out, out_ref = graphed(x), reference(x_ref)
    assert torch.equal(out, out_ref)
    out.pow(2).sum().backward()
    out_ref.pow(2).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(_grads(module), _grads(reference)))
    assert torch.equal(x.grad, x_ref.grad)

    a = torch.randn(3, 2, requires_grad=True)
    b = torch.randn(3, 2)
    a_ref = a.detach().clone().requires_grad_(True)
    assert torch.equal(graphed_fn(a, b), function(a_ref, b))
    graphed_fn(a, b).sum().backward()
    function(a_ref, b).sum().backward()
    assert torch.equal(a.grad, a_ref.grad)

    pair = torch.cuda.make_graphed_callables((module, function), (sample, (torch.ones(1), torch.ones(1))))
    assert pair == (module, function)


def test_make_graphed_callables_checks_like_torch(patched):
    module = torch.nn.Linear(2, 2)
    module.register_forward_hook(lambda *args: None)
    with pytest.raises(AssertionError, match="must not have hooks"):
        torch.cuda.make_graphed_callables(module, (torch.randn(1, 2),))
    with pytest.raises(AssertionError, match="only Tensors"):
        torch.cuda.make_graphed_callables(lambda x, n: x * n, (torch.randn(1), 3))
    with torch.autocast("cpu"):
        with pytest.raises(RuntimeError, match="autocast caching"):
            torch.cuda.make_graphed_callables(torch.nn.Linear(2, 2), (torch.randn(1, 2),))


def test_graph_names_restore(unpatched):
    originals = [getattr(torch.cuda.graphs, n) for n in ("CUDAGraph", "graph", "make_graphed_callables")]
    torchdevice.patch(strict=True, device="cpu")
    assert torch.cuda.graphs.CUDAGraph is torch.cuda.CUDAGraph is not originals[0]
    torchdevice.unpatch()
    assert [getattr(torch.cuda.graphs, n) for n in ("CUDAGraph", "graph", "make_graphed_callables")] == originals


def test_replay_keeps_the_captured_precision(patched):
    static_x = torch.zeros(4, 4, device="cuda")
    weight = torch.randn(4, 4, device="cuda")
    mixed, full = torch.cuda.CUDAGraph(), torch.cuda.CUDAGraph()
    with torch.cuda.graph(mixed):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = static_x @ weight
    with torch.cuda.graph(full):
        high = static_x @ weight
    data = torch.randn(4, 4)
    static_x.copy_(data)
    mixed.replay()  # outside autocast: still the bfloat16 work that was captured
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected_low = data @ weight
        full.replay()  # inside autocast: still the float32 work that was captured
    assert low.dtype == torch.bfloat16 and torch.equal(low, expected_low)
    assert high.dtype == torch.float32 and torch.allclose(high, data @ weight)


@needs("torch.cuda.export_dot", "torch.cuda.export_graph_data")
def test_graph_export_hooks_are_clear_errors(patched):
    for name in ("export_dot", "export_graph_data"):
        with pytest.raises(TargetUnsupportedError, match=rf"torch.cuda.{name} is not supported on the cpu target"):
            getattr(torch.cuda, name)("graph.out")
