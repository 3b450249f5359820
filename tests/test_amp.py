"""Area "amp": autocast, GradScaler and custom_fwd/custom_bwd of CUDA code on the target (CPU)."""
import warnings

import pytest
import torch
from torch import nn

import torchdevice
from torchdevice.core import compat, logger
from torchdevice.ops import amp


@pytest.fixture
def patched():
    """torchdevice active with the faithful precision policy (the requested dtypes run as asked)."""
    torchdevice.unpatch()
    status = torchdevice.patch(strict=True, device="cpu", precision="keep")
    yield status
    torchdevice.unpatch()


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which one-time warnings were already given."""
    monkeypatch.setattr(logger, "_warned", set())


def matmul_dtype():
    a = torch.ones(4, 4, device="cuda")
    return (a @ a).dtype


def cuda_state():
    return torch.is_autocast_enabled(), compat.is_autocast_enabled("cuda"), compat.get_autocast_dtype("cuda")


# -- autocast ------------------------------------------------------------------------------
def test_autocast_cuda_casts_on_target_and_queries_agree(patched):
    assert matmul_dtype() == torch.float32
    with torch.autocast("cuda"):
        assert matmul_dtype() == torch.float16, "float16 by default, as on CUDA"
        assert cuda_state() == (True, True, torch.float16)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            assert torch.get_autocast_gpu_dtype() == torch.float16
        with torch.autocast("cuda", enabled=False):
            assert matmul_dtype() == torch.float32, "enabled=False switches the target's autocast off"
            assert cuda_state()[:2] == (False, False)
        assert matmul_dtype() == torch.float16
    assert matmul_dtype() == torch.float32
    assert cuda_state()[:2] == (False, False)
    assert not compat.is_autocast_enabled("cpu"), "the target's state is restored"


@pytest.mark.parametrize("make", [
    lambda: torch.autocast("cuda", dtype=torch.bfloat16),
    lambda: torch.autocast(device_type="cuda", dtype=torch.bfloat16),
    lambda: torch.amp.autocast("cuda", dtype=torch.bfloat16),
    lambda: torch.cuda.amp.autocast(dtype=torch.bfloat16),
], ids=["torch.autocast", "keyword", "torch.amp.autocast", "torch.cuda.amp.autocast"])
def test_every_spelling_as_context_and_decorator(patched, make):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.autocast is deprecated
        context = make()
        decorator = make()
    assert isinstance(context, torch.amp.autocast_mode.autocast)
    assert context.device == "cuda", "keeps its CUDA identity"
    with context:
        assert matmul_dtype() == torch.bfloat16
        assert cuda_state() == (True, True, torch.bfloat16)

    @decorator
    def forward():
        return matmul_dtype(), cuda_state()

    assert forward() == (torch.bfloat16, (True, True, torch.bfloat16))
    assert matmul_dtype() == torch.float32


def test_model_forward_under_autocast_matches_half_precision_math(patched):
    torch.manual_seed(0)
    model = nn.Linear(8, 4).cuda()
    x = torch.randn(3, 8, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = model(x)
    expected = torch.nn.functional.linear(x.bfloat16(), model.weight.bfloat16(), model.bias.bfloat16())
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, expected)


def test_explicit_cpu_autocast_untouched(patched):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert matmul_dtype() == torch.bfloat16
        assert compat.is_autocast_enabled("cpu") and not compat.is_autocast_enabled("cuda")


def test_unsupported_dtype_uses_nearest_with_one_warning(unpatched, monkeypatch, fresh_warnings):
    monkeypatch.setattr(amp, "_autocast_dtypes", lambda device_type: (torch.bfloat16,))
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    with pytest.warns(torchdevice.TorchDeviceWarning, match=r"runs as torch.bfloat16 on cpu"):
        with torch.autocast("cuda"):
            assert matmul_dtype() == torch.bfloat16
            assert compat.get_autocast_dtype("cuda") == torch.float16, "queries report the requested state, as on a GPU"
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchdevice.TorchDeviceWarning)
        with torch.autocast("cuda"):  # second time: no warning
            assert matmul_dtype() == torch.bfloat16
        with torch.autocast("cuda", enabled=False):
            assert matmul_dtype() == torch.float32


def test_no_autocast_on_target_runs_float32_with_warning(unpatched, monkeypatch, fresh_warnings):
    monkeypatch.setattr(amp, "_autocast_dtypes", lambda device_type: ())
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    with pytest.warns(torchdevice.TorchDeviceWarning, match="runs in float32"):
        with torch.autocast("cuda"):
            assert matmul_dtype() == torch.float32
            assert torch.is_autocast_enabled(), "the program still sees the region it asked for"


def test_probe_reads_this_torchs_cpu_autocast():
    # torch 2.13's CPU autocast takes both; the probe asks torch, it does not assume.
    assert set(amp._autocast_dtypes("cpu")) == {torch.float16, torch.bfloat16}
    plan = amp._dtype_plan("cpu", (torch.bfloat16,))
    assert plan[torch.float16][0] == torch.bfloat16 and plan[torch.bfloat16] == (torch.bfloat16, None)


def test_unpatch_restores_autocast(unpatched):
    init = torch.amp.autocast_mode.autocast.__dict__["__init__"]
    torchdevice.patch(strict=True, device="cpu", precision="keep")
    assert torch.amp.autocast_mode.autocast.__dict__["__init__"] is not init
    torchdevice.unpatch()
    assert torch.amp.autocast_mode.autocast.__dict__["__init__"] is init
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.autocast("cuda"):  # unpatched on a CPU machine: torch disables it
            a = torch.ones(2, 2)
            assert (a @ a).dtype == torch.float32 and not torch.is_autocast_enabled()


# -- custom_fwd / custom_bwd -------------------------------------------------------------------
def make_function(fwd_decorator, bwd_decorator, seen):
    class MatMul(torch.autograd.Function):
        @staticmethod
        @fwd_decorator
        def forward(ctx, a, b):
            seen["forward"] = (a.dtype, torch.is_autocast_enabled())
            ctx.save_for_backward(a, b)
            return a @ b

        @staticmethod
        @bwd_decorator
        def backward(ctx, grad):
            seen["backward"] = compat.is_autocast_enabled("cuda")
            a, b = ctx.saved_tensors
            return grad @ b.t(), a.t() @ grad
    return MatMul


_HAS_AMP_CUSTOM_FWD = hasattr(torch.amp, "custom_fwd")
_NO_AMP_CUSTOM_FWD = f"torch.amp.custom_fwd not in torch {torch.__version__}"


def cuda_custom_fwd_bwd():
    """custom_fwd/custom_bwd for "cuda" in this torch's newest spelling."""
    if _HAS_AMP_CUSTOM_FWD:
        return torch.amp.custom_fwd(device_type="cuda"), torch.amp.custom_bwd(device_type="cuda")
    return torch.cuda.amp.custom_fwd, torch.cuda.amp.custom_bwd


@pytest.mark.parametrize("spelling", [
    pytest.param("torch.amp", marks=pytest.mark.skipif(not _HAS_AMP_CUSTOM_FWD, reason=_NO_AMP_CUSTOM_FWD)),
    "torch.cuda.amp"])
def test_custom_fwd_casts_inputs_on_target(patched, spelling):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        if spelling == "torch.amp":
            fwd = torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
            bwd = torch.amp.custom_bwd(device_type="cuda")
        else:
            fwd = torch.cuda.amp.custom_fwd(cast_inputs=torch.float32)
            bwd = torch.cuda.amp.custom_bwd
        seen = {}
        MatMul = make_function(fwd, bwd, seen)
    a = torch.randn(3, 3, device="cuda").half().requires_grad_()
    b = torch.randn(3, 3, device="cuda").half().requires_grad_()
    with torch.autocast("cuda"):
        out = MatMul.apply(a, b)
    assert seen["forward"] == (torch.float32, False), "inputs cast to float32, autocast off inside"
    assert out.dtype == torch.float32
    out.sum().backward()
    assert seen["backward"] is False, "backward runs with forward's (disabled) autocast state"
    assert a.grad.dtype == torch.float16


def test_custom_bwd_replays_forward_autocast(patched):
    seen = {}
    MatMul = make_function(*cuda_custom_fwd_bwd(), seen)
    a = torch.randn(3, 3, device="cuda", requires_grad=True)
    with torch.autocast("cuda"):
        out = MatMul.apply(a, torch.randn(3, 3, device="cuda"))
    assert seen["forward"] == (torch.float32, True)
    assert out.dtype == torch.float16, "ops inside forward autocast"
    out.float().sum().backward()
    assert seen["backward"] is True


# -- GradScaler ------------------------------------------------------------------------------------
_HAS_AMP_SCALER = hasattr(torch.amp, "GradScaler")
_NO_AMP_SCALER = f"torch.amp.GradScaler not in torch {torch.__version__}"


def cuda_scaler(**kwargs):
    """A GradScaler for "cuda" in this torch's newest spelling."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.cuda.amp.GradScaler is deprecated from 2.4
        if _HAS_AMP_SCALER:
            return torch.amp.GradScaler("cuda", **kwargs)
        return torch.cuda.amp.GradScaler(**kwargs)


@pytest.mark.parametrize("make", [
    pytest.param(lambda **kw: torch.amp.GradScaler("cuda", **kw),
                 marks=pytest.mark.skipif(not _HAS_AMP_SCALER, reason=_NO_AMP_SCALER)),
    lambda **kw: torch.cuda.amp.GradScaler(**kw),
], ids=["torch.amp.GradScaler", "torch.cuda.amp.GradScaler"])
def test_grad_scaler_scales_unscales_and_skips_inf_steps(patched, make):
    torch.manual_seed(0)
    model = nn.Linear(4, 1).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        scaler = make(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5, growth_interval=2)
    assert scaler.is_enabled() and scaler.get_scale() == 1024.0
    x = torch.randn(8, 4, device="cuda")

    def backward():
        optimizer.zero_grad()
        loss = model(x).pow(2).mean()
        scaled = scaler.scale(loss)
        assert torch.allclose(scaled, loss * 1024.0 * (scaler.get_scale() / 1024.0))
        scaled.backward()
        return loss

    # A clean step: unscale_ gives the true gradients, step applies them.
    loss = backward()
    true_grad = torch.autograd.grad(model(x).pow(2).mean(), model.weight)[0]
    scaler.unscale_(optimizer)
    assert torch.allclose(model.weight.grad, true_grad, rtol=1e-5, atol=1e-7)
    before = model.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert torch.allclose(model.weight, before - 0.1 * true_grad, rtol=1e-5, atol=1e-7)
    assert scaler.get_scale() == 1024.0 and scaler._get_growth_tracker() == 1

    # An inf gradient: the step is skipped and the scale backs off.
    backward()
    model.weight.grad[0, 0] = float("inf")
    before = model.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(model.weight, before), "step with inf gradient skipped"
    assert scaler.get_scale() == 512.0 and scaler._get_growth_tracker() == 0

    # A nan gradient as well.
    backward()
    model.bias.grad[0] = float("nan")
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(model.weight, before) and scaler.get_scale() == 256.0

    # growth_interval clean steps in a row: the scale grows.
    for _ in range(2):
        backward()
        scaler.step(optimizer)
        scaler.update()
    assert scaler.get_scale() == 512.0
    assert not torch.equal(model.weight, before)

    state = scaler.state_dict()
    assert state["scale"] == 512.0 and state["_growth_tracker"] == 0 and state["growth_interval"] == 2
    other = cuda_scaler()
    other.load_state_dict(state)
    assert other.get_scale() == 512.0 and other.get_growth_interval() == 2 and other.get_backoff_factor() == 0.5
    assert loss.item() > 0


def test_grad_scaler_with_fused_optimizer_skips_inf(patched):
    model = nn.Linear(4, 1).cuda()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
    scaler = cuda_scaler(init_scale=64.0)
    with torch.autocast("cuda"):
        loss = model(torch.ones(2, 4, device="cuda")).float().sum()
    scaler.scale(loss).backward()
    model.weight.grad.fill_(float("inf"))
    before = model.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(model.weight, before) and scaler.get_scale() == 32.0


def test_amp_training_loop_learns(patched):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 1)).cuda()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    scaler = cuda_scaler()
    x = torch.randn(64, 4, device="cuda")
    y = x.sum(dim=1, keepdim=True)
    losses = []
    for _ in range(60):
        optimizer.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = nn.functional.mse_loss(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 4


# -- GradScaler kernels where the target has none ----------------------------------------------
needs_cpu_scaler_kernels = pytest.mark.skipif(
    not amp._scaler_kernels_work(torch.device("cpu")),
    reason="compares with torch's CPU kernels for _amp_foreach_non_finite_check_and_unscale_ and "
           f"_amp_update_scale_, which torch {torch.__version__} lacks")


@needs_cpu_scaler_kernels
def test_python_unscale_matches_torch_kernel():
    torch.manual_seed(1)
    for poison in (None, float("inf"), float("nan")):
        grads = [torch.randn(5), torch.randn(2, 3)]
        if poison is not None:
            grads[1][1, 2] = poison
        mine = [g.clone() for g in grads]
        found_ref, found_mine = torch.zeros(()), torch.zeros(())
        inv = torch.full((), 0.125)
        torch._amp_foreach_non_finite_check_and_unscale_(grads, found_ref, inv)
        amp._unscale_and_check(mine, found_mine, inv)
        assert found_mine.item() == found_ref.item() == (0.0 if poison is None else 1.0)
        for ref, got in zip(grads, mine):
            assert torch.equal(ref.nan_to_num(), got.nan_to_num())


@needs_cpu_scaler_kernels
def test_python_update_scale_matches_torch_kernel():
    torch.manual_seed(2)
    flags = (torch.rand(40) < 0.3).float()
    ref_scale, ref_tracker = torch.full((), 2.0 ** 10), torch.zeros((), dtype=torch.int32)
    my_scale, my_tracker = ref_scale.clone(), ref_tracker.clone()
    history = []
    for flag in flags:
        torch._amp_update_scale_(ref_scale, ref_tracker, flag, 2.0, 0.5, 3)
        returned = amp._update_scale(my_scale, my_tracker, flag, 2.0, 0.5, 3)
        assert returned is my_scale
        assert my_scale.item() == ref_scale.item() and my_tracker.item() == ref_tracker.item()
        history.append(my_scale.item())
    assert len(set(history)) > 2, "the sequence really grew and backed off"


def test_scaler_fallback_kernels_used_when_target_has_none(unpatched, monkeypatch):
    monkeypatch.setattr(amp, "_scaler_kernels_work", lambda device: False)
    calls = []
    real_unscale, real_update = amp._unscale_and_check, amp._update_scale
    monkeypatch.setattr(amp, "_unscale_and_check", lambda *a: calls.append("unscale") or real_unscale(*a))
    monkeypatch.setattr(amp, "_update_scale", lambda *a: calls.append("update") or real_update(*a))
    status = torchdevice.patch(strict=True, device="cpu", precision="keep")
    assert "torch._amp_update_scale_" in status["areas"]["amp"]["applied"]
    assert torch._amp_update_scale_.__wrapped__ is torchdevice.core.patch.REGISTRY.original(
        "torch", "_amp_update_scale_")
    model = nn.Linear(2, 1).cuda()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = cuda_scaler(init_scale=8.0, growth_interval=1)
    scaler.scale(model(torch.ones(1, 2, device="cuda")).sum()).backward()
    model.weight.grad[0, 0] = float("inf")
    before = model.weight.detach().clone()
    scaler.step(optimizer)
    scaler.update()
    assert torch.equal(model.weight, before) and scaler.get_scale() == 4.0
    optimizer.zero_grad()
    scaler.scale(model(torch.ones(1, 2, device="cuda")).sum()).backward()
    scaler.step(optimizer)
    scaler.update()
    assert not torch.equal(model.weight, before) and scaler.get_scale() == 8.0
    assert calls == ["unscale", "update", "unscale", "update"], "the Python kernels did the work"
    torchdevice.unpatch()
    assert not hasattr(torch._amp_update_scale_, "__wrapped__")


@pytest.mark.skipif(not _HAS_AMP_SCALER, reason=_NO_AMP_SCALER + " (the replacement is the scale in use there)")
def test_scale_without_cuda_check_matches_torch(patched):
    scaler = torch.amp.GradScaler("cuda", init_scale=4.0)
    replacement = amp._scale_any_device(torch.amp.GradScaler.scale)
    mine = torch.amp.GradScaler("cuda", init_scale=4.0)
    x, y = torch.ones(2, device="cuda"), torch.full((1,), 3.0, device="cuda")
    assert torch.equal(replacement(mine, x), scaler.scale(x))
    pair = replacement(mine, (x, [y]))
    assert isinstance(pair, tuple) and isinstance(pair[1], list)
    assert torch.equal(pair[0], x * 4) and torch.equal(pair[1][0], y * 4)
    assert [t.tolist() for t in replacement(mine, iter([x]))] == [[4.0, 4.0]]
    with pytest.raises(ValueError):
        replacement(mine, 3.0)
    disabled = torch.amp.GradScaler("cuda", enabled=False)
    assert replacement(disabled, x) is x


def test_legacy_scaler_probe(monkeypatch):
    if not _HAS_AMP_SCALER:  # the real thing: this torch's scaler takes CUDA tensors only
        assert amp._legacy_scaler_scales(torch.device("cpu")) is False
        return
    class CudaOnly(torch.amp.GradScaler):  # how torch <= 2.2 behaved: no device argument, CUDA only
        def __init__(self, init_scale=2.0 ** 16, enabled=True):
            super().__init__("cpu", init_scale=init_scale, enabled=enabled)

        def scale(self, outputs):
            assert outputs.is_cuda
            return super().scale(outputs)

    monkeypatch.setattr(torch.cuda.amp, "GradScaler", CudaOnly)
    assert amp._legacy_scaler_scales(torch.device("cpu")) is False
    monkeypatch.setattr(torch.cuda.amp, "GradScaler", lambda init_scale: torch.amp.GradScaler("cpu", init_scale))
    assert amp._legacy_scaler_scales(torch.device("cpu")) is True
