"""Area "nn": DataParallel, DDP device ids, SyncBatchNorm, SDPA backends, fused/foreach, init (CPU target)."""
import inspect
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torchdevice
from torchdevice.core import logger
from torchdevice.core.device import Target
from torchdevice.ops.nn import attention, optim, parallel

try:
    from torch.nn.attention import SDPBackend, sdpa_kernel
except ImportError:  # torch < 2.3
    SDPBackend = sdpa_kernel = None
needs_sdpa_kernel = pytest.mark.skipif(
    sdpa_kernel is None, reason="torch.nn.attention.sdpa_kernel does not exist in this torch (added in 2.3)")


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(logger, "_warned", set())


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


# -- DataParallel ----------------------------------------------------------------------------------
def test_data_parallel_matches_plain_model(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=2)  # device_ids=[0, 1] must exist
    plain = small_model().cuda()
    wrapped = nn.DataParallel(small_model(), device_ids=[0, 1], output_device=0).cuda()
    x = torch.randn(10, 6, device="cuda")
    out_plain, out_wrapped = plain(x), wrapped(x)
    assert torch.equal(out_plain, out_wrapped)
    out_plain.sum().backward()
    out_wrapped.sum().backward()
    for a, b in zip(plain.parameters(), wrapped.module.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert list(wrapped.state_dict())[0].startswith("module."), "checkpoint keys as on a GPU"


def test_data_parallel_moves_inputs_to_a_non_cpu_target():
    # MPS path, with the meta device standing in for the target: inputs move, as to device_ids[0].
    class Recorder(nn.Module):
        def forward(self, x, extra=None, pair=()):
            return x.device, extra.device, [t.device for t in pair]

    target = torch.device("meta")
    forward = parallel._data_parallel_forward(target)(nn.DataParallel.forward)
    dp = nn.DataParallel(Recorder())
    assert dp.device_ids == [], "torch runs the module unreplicated without CUDA"
    got = forward(dp, torch.ones(2), extra=torch.zeros(1), pair=(torch.ones(1), torch.ones(1)))
    assert got == (target, target, [target, target])


# -- DistributedDataParallel device ids ----------------------------------------------------------
def test_ddp_device_ids_on_cpu_target(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=2)  # cuda:1 must exist
    cpu = Target("cpu", torch.device("cpu"), True, "test", True, False)
    assert parallel._mapped_ids([0], 0, cpu) == (None, None)
    assert parallel._mapped_ids([torch.device("cuda", 1)], torch.device("cuda:1"), cpu) == (None, None)
    assert parallel._mapped_ids(None, None, cpu) == (None, None)


def test_ddp_device_ids_on_mps_target(unpatched):
    torchdevice.patch(strict=True, device="cpu", device_count=2)  # index 1 must exist
    mps = Target("mps", torch.device("mps", 0), True, "test", False, False)
    assert parallel._mapped_ids([1], 1, mps) == ([0], 0)


def test_ddp_on_a_backend_without_target_support_fails_clearly():
    with pytest.raises(RuntimeError) as error:
        parallel._check_backend_handles("mps", "gloo")
    message = str(error.value)
    assert "DistributedDataParallel" in message and "mps" in message and "TORCHDEVICE_DEVICE=cpu" in message
    parallel._check_backend_handles("cpu", "gloo")  # gloo takes CPU tensors


# -- SyncBatchNorm -------------------------------------------------------------------------------
def test_sync_batch_norm_without_group_is_batch_norm(patched):
    torch.manual_seed(0)
    sync = nn.SyncBatchNorm(3).cuda()
    plain = nn.BatchNorm1d(3).cuda()
    x = torch.randn(8, 3, 5, device="cuda")
    assert torch.allclose(sync(x), plain(x))
    assert torch.allclose(sync.running_var, plain.running_var)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(2))).cuda()
    assert isinstance(converted[0], nn.SyncBatchNorm)
    y = torch.randn(4, 2, 3, 3, device="cuda")
    assert torch.allclose(converted(y), nn.functional.batch_norm(y, None, None, training=True))


# -- scaled dot-product attention ------------------------------------------------------------------
def attention_inputs():
    torch.manual_seed(0)
    return [torch.randn(2, 2, 5, 8, device="cuda") for _ in range(3)]


@needs_sdpa_kernel
def test_probe_finds_the_cpu_backends(patched):
    found = attention._available_backends(torch.device("cpu"))
    assert SDPBackend.MATH in found and SDPBackend.EFFICIENT_ATTENTION not in found
    assert SDPBackend.CUDNN_ATTENTION not in found


@needs_sdpa_kernel
@pytest.mark.parametrize("select", [
    lambda: sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]),
    lambda: sdpa_kernel(SDPBackend.CUDNN_ATTENTION),
    lambda: torch.backends.cuda.sdp_kernel(enable_flash=False, enable_math=False, enable_mem_efficient=True),
], ids=["sdpa_kernel-efficient", "sdpa_kernel-cudnn", "backends.cuda.sdp_kernel"])
def test_cuda_only_backend_selection_falls_back(patched, fresh_warnings, select):
    q, k, v = attention_inputs()
    expected = F.scaled_dot_product_attention(q, k, v)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # sdp_kernel is deprecated
        with pytest.warns(torchdevice.TorchDeviceWarning, match="fallback"):
            with select():
                out = F.scaled_dot_product_attention(q, k, v)
    assert torch.allclose(out, expected, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchdevice.TorchDeviceWarning)
        with sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):  # one warning only
            F.scaled_dot_product_attention(q, k, v)
    assert torch.backends.cuda.math_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled(), "restored on exit"


@needs_sdpa_kernel
def test_selection_the_target_runs_is_left_alone(patched, fresh_warnings):
    q, k, v = attention_inputs()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchdevice.TorchDeviceWarning)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            assert not torch.backends.cuda.math_sdp_enabled(), "exactly as asked"
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.allclose(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=1e-6)


def test_enable_switches_keep_a_backend(patched, fresh_warnings):
    q, k, v = attention_inputs()
    expected = F.scaled_dot_product_attention(q, k, v)
    try:
        with pytest.warns(torchdevice.TorchDeviceWarning, match="fallback"):
            torch.backends.cuda.enable_flash_sdp(False)
            torch.backends.cuda.enable_math_sdp(False)
            torch.backends.cuda.enable_mem_efficient_sdp(True)
        assert torch.allclose(F.scaled_dot_product_attention(q, k, v), expected, atol=1e-6)
    finally:
        for name in ("flash", "math", "mem_efficient", "cudnn"):
            switch = getattr(torch.backends.cuda, f"enable_{name}_sdp", None)  # cudnn: not in every torch
            if switch is not None:
                switch(True)


@needs_sdpa_kernel
def test_multihead_attention_under_flash_selection(patched):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, batch_first=True).cuda().eval()
    x = torch.randn(2, 7, 16, device="cuda")
    expected = layer(x)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        assert torch.allclose(layer(x), expected, atol=1e-5)


# -- optimizers, clipping, init ----------------------------------------------------------------------
def train(optimizer_factory, steps=5):
    model = small_model().cuda()
    optimizer = optimizer_factory(model.parameters())
    x = torch.randn(16, 6, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    for _ in range(steps):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.5, foreach=True)
        optimizer.step()
    return [p.detach() for p in model.parameters()]


@pytest.mark.parametrize("cls", [torch.optim.AdamW, torch.optim.Adam, pytest.param(
    torch.optim.SGD, marks=pytest.mark.skipif("fused" not in inspect.signature(torch.optim.SGD).parameters,
                                              reason=f"SGD(fused=...) not in torch {torch.__version__}"))])
def test_fused_and_foreach_flags_match_default(patched, cls):
    reference = train(lambda p: cls(p, lr=0.01))
    for flags in ({"fused": True}, {"foreach": True}):
        got = train(lambda p: cls(p, lr=0.01, **flags))
        for a, b in zip(reference, got):
            assert torch.allclose(a, b, atol=1e-6), flags


def test_flags_fall_back_when_the_target_lacks_kernels(patched, monkeypatch, fresh_warnings):
    reference = train(lambda p: torch.optim.AdamW(p, lr=0.01))
    monkeypatch.setattr(optim, "_verdicts", {})
    monkeypatch.setattr(optim, "_optimizer_flag_works", lambda cls, init, flag, device: flag != "fused")
    monkeypatch.setattr(optim, "_clip_foreach_works", lambda name, original, device: False)
    with pytest.warns(torchdevice.TorchDeviceWarning) as record:
        got = train(lambda p: torch.optim.AdamW(p, lr=0.01, fused=True))
    messages = " ".join(str(w.message) for w in record)
    assert "AdamW(fused=True)" in messages and "clip_grad_norm_(foreach=True)" in messages
    for a, b in zip(reference, got):
        assert torch.allclose(a, b, atol=1e-6)
    optimizer = torch.optim.AdamW(small_model().parameters(), fused=True)
    assert not optimizer.param_groups[0]["fused"] and not getattr(optimizer, "_step_supports_amp_scaling", False)


def test_flag_probe_runs_a_real_step(patched, monkeypatch):
    monkeypatch.setattr(optim, "_verdicts", {})
    init = torchdevice.core.patch.REGISTRY.original("torch.optim.AdamW", "__init__")
    cpu_kernel = torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_adamw_", "CPU")
    assert optim._optimizer_flag_works(torch.optim.AdamW, init, "fused", torch.device("cpu")) is cpu_kernel

    class Broken(torch.optim.SGD):
        def step(self, closure=None):
            raise RuntimeError("no kernel for this device")

    assert optim._optimizer_flag_works(Broken, torch.optim.SGD.__init__, "fused", torch.device("cpu")) is False


def test_clip_grad_norm_value(patched):
    model = small_model().cuda()
    model(torch.ones(2, 6, device="cuda")).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    returned = nn.utils.clip_grad_norm_(model.parameters(), 0.1, foreach=True)
    assert torch.allclose(returned, total)
    clipped = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert torch.allclose(clipped, torch.tensor(0.1), atol=1e-6)
    nn.utils.clip_grad_value_(model.parameters(), 0.001, foreach=True)
    assert max(p.grad.abs().max().item() for p in model.parameters()) == pytest.approx(0.001)


def test_init_with_cuda_generator_is_deterministic(patched):
    weight = torch.empty(4, 5, device="cuda")
    nn.init.normal_(weight, generator=torch.Generator(device="cuda").manual_seed(7))
    again = torch.empty(4, 5, device="cuda")
    nn.init.normal_(again, generator=torch.Generator("cuda").manual_seed(7))
    reference = torch.empty(4, 5).normal_(generator=torch.Generator().manual_seed(7))
    assert torch.equal(weight, again) and torch.equal(weight, reference)
    nn.init.kaiming_uniform_(weight, generator=torch.Generator("cuda").manual_seed(3))
    nn.init.kaiming_uniform_(again, generator=torch.Generator("cuda").manual_seed(3))
    assert torch.equal(weight, again) and weight.std() > 0
