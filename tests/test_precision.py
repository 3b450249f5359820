"""The precision policy (TORCHDEVICE_PRECISION): what "cuda" autocast regions compute in, and what programs see."""
import io
import re
import warnings

import pytest
import torch
from torch import nn

import torchdevice
from conftest import clean_env, run_python
from torchdevice.core import compat, config, logger
from torchdevice.ops import precision

HALF = (torch.float16, torch.bfloat16)


def matmul_dtype():
    a = torch.ones(4, 4, device="cuda")
    return (a @ a).dtype


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(logger, "_warned", set())


@pytest.fixture
def hardware(monkeypatch):
    """Fake the CPU's half-precision answer: ``hardware(fast={dtype: bool})``."""
    def set_answer(fast):
        monkeypatch.setattr(precision, "cpu_fast", lambda dtype, **_: (fast[dtype], f"faked: {fast[dtype]}"))
    return set_answer


def patch_with(mode):
    torchdevice.unpatch()
    return torchdevice.patch(strict=True, device="cpu", precision=mode)


# -- the setting ---------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["fp16", "half", "true", "float64", "auto,keep"])
def test_bad_values_name_the_variable_and_the_accepted_ones(value):
    with pytest.raises(config.ConfigError) as caught:
        config.load({"TORCHDEVICE_PRECISION": value})
    message = str(caught.value)
    assert "TORCHDEVICE_PRECISION" in message and repr(value) in message
    assert all(mode in message for mode in config.PRECISIONS)


@pytest.mark.parametrize("value,parsed", [(None, "auto"), ("", "auto"), ("KEEP", "keep"), (" float32 ", "float32"),
                                          ("bfloat16", "bfloat16"), ("float16", "float16"), ("auto", "auto")])
def test_values_parse(value, parsed):
    env = {} if value is None else {"TORCHDEVICE_PRECISION": value}
    assert config.load(env).precision == parsed


def test_bad_value_leaves_torch_untouched():
    code = """
        import sys
        try:
            import torch  # with the autoload installed, the hook refuses the value before torch loads
        except Exception as exc:
            print(type(exc).__name__, exc)
            print("torch" not in sys.modules)
            raise SystemExit
        before = torch.amp.autocast_mode.autocast.__init__
        try:
            import torchdevice
        except Exception as exc:
            print(type(exc).__name__, exc)
        print(torch.amp.autocast_mode.autocast.__init__ is before)
    """
    done = run_python(code, env=clean_env(TORCHDEVICE_PRECISION="fp16", PYTHONPATH=_src()))
    assert "TORCHDEVICE_PRECISION='fp16' is not valid" in done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1] == "True"


def _src():
    from pathlib import Path

    return str(Path(torchdevice.__file__).resolve().parents[1])


# -- decisions for each hardware answer -----------------------------------------------------------
def _torch_says(answer):
    return lambda dtype: (answer, f"torch says {answer}")


def _os_says(answer):
    return lambda dtype: (answer, f"os says {answer}")


@pytest.mark.parametrize("torch_answer,os_answer,ratio,fast,source", [
    (True, False, 0.1, True, "torch"),       # torch knows: it decides
    (False, True, 9.0, False, "torch"),
    (None, True, 0.1, True, "os"),           # torch cannot tell: the OS flags decide
    (None, False, 9.0, False, "os"),
    (None, None, 1.5, True, "measured"),     # neither: the measurement decides
    (None, None, 0.95, True, "measured"),    # within 10% of float32 still counts as fast
    (None, None, 0.5, False, "measured"),
])
def test_cpu_decision_chain(torch_answer, os_answer, ratio, fast, source):
    measured = []
    answer, why = precision.cpu_fast(torch.bfloat16, torch_says=_torch_says(torch_answer), os_says=_os_says(os_answer),
                                     measure_ratio=lambda dtype: measured.append(dtype) or ratio)
    assert answer is fast
    assert (measured == [torch.bfloat16]) is (source == "measured"), "the measurement runs only when uncertain"
    assert {"torch": "torch says", "os": "os says", "measured": "measured"}[source] in why


@pytest.mark.parametrize("machine,flags,sysctl,expected", [
    ("x86_64", {"avx2", "avx512f", "avx512_bf16"}, None, {torch.bfloat16: True, torch.float16: False}),
    ("x86_64", {"avx2", "amx_tile", "amx_bf16", "amx_fp16"}, None, {torch.bfloat16: True, torch.float16: True}),
    ("x86_64", {"avx2", "avx512_fp16"}, None, {torch.bfloat16: False, torch.float16: True}),
    ("x86_64", {"fpu", "avx", "avx2"}, None, {torch.bfloat16: False, torch.float16: False}),   # this machine
    ("x86_64", set(), None, {torch.bfloat16: None, torch.float16: None}),                       # no /proc/cpuinfo
    ("aarch64", {"fp", "asimd", "asimdhp", "bf16"}, None, {torch.bfloat16: None, torch.float16: None}),
    ("aarch64", {"fp", "asimd"}, None, {torch.bfloat16: False, torch.float16: False}),
    ("arm64", set(), {"hw.optional.arm.FEAT_BF16": False, "hw.optional.arm.FEAT_FP16": True},
     {torch.bfloat16: False, torch.float16: None}),
])
def test_os_answers(machine, flags, sysctl, expected):
    ask = (lambda name: sysctl.get(name)) if sysctl else (lambda name: None)
    for dtype, answer in expected.items():
        assert precision.os_answer(dtype, machine=machine, flags=frozenset(flags), sysctl=ask)[0] is answer, dtype


def test_torch_is_asked_first(monkeypatch):
    class FakeCpu:
        @staticmethod
        def _is_avx512_bf16_supported():
            return True

    monkeypatch.setattr(torch._C, "_cpu", FakeCpu, raising=False)
    assert precision.torch_answer(torch.bfloat16) == (True, "torch._C._cpu._is_avx512_bf16_supported() is True")


def test_this_machines_answer_is_consistent():
    """Whatever this CPU is, the chain gives one answer with a reason, and torch's/the OS's facts agree with it."""
    for dtype in HALF:
        fast, why = precision.cpu_fast(dtype)
        assert isinstance(fast, bool) and why
        os_answer, _ = precision.os_answer(dtype)
        if os_answer is not None and precision.torch_answer(dtype)[0] is None:
            assert fast is os_answer


def test_measurement_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(precision, "measure", lambda dtype: calls.append(dtype) or 0.25)
    assert precision.measured(torch.float16) == 0.25 and precision.measured(torch.float16) == 0.25
    assert calls == [torch.float16]


@pytest.mark.parametrize("dtype,supported,fast", [(torch.float16, (), True), (torch.bfloat16, (torch.bfloat16,), True),
                                                  (torch.bfloat16, (torch.float16,), False)])
def test_mps_decisions(dtype, supported, fast):
    assert precision.mps_fast(dtype, supported)[0] is fast


@pytest.mark.parametrize("mode,fast,requested,runs", [
    ("auto", False, torch.float16, None), ("auto", True, torch.float16, torch.float16),
    ("auto", False, torch.bfloat16, None), ("auto", True, torch.bfloat16, torch.bfloat16),
    ("keep", False, torch.float16, torch.float16), ("float32", True, torch.bfloat16, None),
    ("bfloat16", False, torch.float16, torch.bfloat16), ("float16", False, torch.bfloat16, torch.float16),
])
def test_policy_matrix(mode, fast, requested, runs):
    policy = precision.Policy(mode, "cpu", HALF, fast=lambda dtype: (fast, "faked"))
    assert policy.decide(requested)[0] is runs
    assert set(policy.describe()["decisions"]) == {str(requested).split(".")[1]}


def test_policy_modes_match_the_config_table():
    assert precision.MODES == config.PRECISIONS


# -- what runs, and what the program sees ------------------------------------------------------------
@pytest.mark.parametrize("mode,fast,requested,runs", [
    ("auto", False, torch.float16, torch.float32), ("auto", True, torch.bfloat16, torch.bfloat16),
    ("keep", False, torch.float16, torch.float16), ("float32", True, torch.bfloat16, torch.float32),
    ("bfloat16", False, torch.float16, torch.bfloat16),
])
def test_regions_compute_per_policy_and_report_the_requested_state(unpatched, hardware, mode, fast, requested, runs):
    hardware({torch.float16: fast, torch.bfloat16: fast})
    patch_with(mode)
    assert matmul_dtype() == torch.float32
    with torch.autocast("cuda", dtype=requested):
        assert matmul_dtype() == runs
        assert torch.is_autocast_enabled() and compat.is_autocast_enabled("cuda")
        assert compat.get_autocast_dtype("cuda") == requested
        if hasattr(torch, "get_autocast_gpu_dtype"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                assert torch.get_autocast_gpu_dtype() == requested
        h = torch.full((2,), 20.0, dtype=torch.float16, device="cuda")
        assert torch.isfinite(torch.exp(h)).all(), "CUDA's numerics: exp computes in float32 in every mode"
        with torch.autocast("cuda", enabled=False):
            assert matmul_dtype() == torch.float32 and not compat.is_autocast_enabled("cuda")
    assert not compat.is_autocast_enabled("cuda") and matmul_dtype() == torch.float32
    assert not compat.is_autocast_enabled("cpu"), "the target's autocast is restored"


@pytest.mark.parametrize("mode", ["auto", "keep"])
def test_cuda_amp_autocast_and_decorator(unpatched, hardware, mode):
    hardware({torch.float16: False, torch.bfloat16: False})
    patch_with(mode)
    expected = torch.float32 if mode == "auto" else torch.float16

    @torch.autocast("cuda")
    def forward():
        return matmul_dtype(), compat.get_autocast_dtype("cuda")

    assert forward() == (expected, torch.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        with torch.cuda.amp.autocast():
            assert matmul_dtype() == expected and compat.is_autocast_enabled("cuda")


@pytest.mark.parametrize("mode", ["auto", "keep"])
def test_custom_fwd_cast_inputs_follow_the_policy(unpatched, hardware, mode):
    hardware({torch.float16: False, torch.bfloat16: False})
    patch_with(mode)
    custom_fwd = getattr(torch.amp, "custom_fwd", None)
    custom_bwd = getattr(torch.amp, "custom_bwd", None)
    if custom_fwd is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            fwd, bwd = torch.cuda.amp.custom_fwd(cast_inputs=torch.float16), torch.cuda.amp.custom_bwd
    else:
        fwd, bwd = custom_fwd(device_type="cuda", cast_inputs=torch.float16), custom_bwd(device_type="cuda")
    seen = {}

    class Square(torch.autograd.Function):
        @staticmethod
        @fwd
        def forward(ctx, x):
            seen["dtype"] = x.dtype
            seen["autocast"] = compat.is_autocast_enabled("cuda")
            ctx.save_for_backward(x)
            return x * x

        @staticmethod
        @bwd
        def backward(ctx, grad):
            x, = ctx.saved_tensors
            return 2 * x * grad

    x = torch.randn(3, device="cuda", requires_grad=True)
    with torch.autocast("cuda"):
        y = Square.apply(x)
    y.sum().backward()
    assert seen == {"dtype": torch.float32 if mode == "auto" else torch.float16, "autocast": False}
    assert torch.allclose(x.grad, 2 * x.detach(), atol=1e-2)


# -- GradScaler under each mode ---------------------------------------------------------------------------
def _scaler():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return torch.amp.GradScaler("cuda", init_scale=2.0 ** 10, growth_interval=2)
        except (AttributeError, TypeError):
            return torch.cuda.amp.GradScaler(init_scale=2.0 ** 10, growth_interval=2)


def _step(model, opt, scaler, x, poison=False):
    with torch.autocast("cuda"):
        loss = model(x).float().pow(2).mean()
    opt.zero_grad()
    scaler.scale(loss).backward()
    if poison:
        next(model.parameters()).grad.fill_(float("inf"))
    before = [p.detach().clone() for p in model.parameters()]
    scaler.step(opt)
    scaler.update()
    return loss, before


@pytest.mark.parametrize("mode", ["auto", "keep", "float32", "bfloat16"])
def test_grad_scaler_scales_skips_and_grows_under_every_mode(unpatched, hardware, mode):
    hardware({torch.float16: False, torch.bfloat16: False})
    patch_with(mode)
    torch.manual_seed(0)
    model = nn.Linear(4, 4).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = _scaler()
    x = torch.randn(8, 4, device="cuda")
    assert scaler.is_enabled()
    loss, _ = _step(model, opt, scaler, x)
    assert float(scaler.scale(torch.ones((), device="cuda"))) == 2.0 ** 10
    _, before = _step(model, opt, scaler, x, poison=True)
    assert all(torch.equal(b, p) for b, p in zip(before, model.parameters())), "inf step skipped"
    assert scaler.get_scale() == 2.0 ** 9, "scale backed off"
    _step(model, opt, scaler, x)
    _step(model, opt, scaler, x)
    assert scaler.get_scale() == 2.0 ** 10, "grown after growth_interval clean steps"
    assert torch.isfinite(loss)


# A GradScaler state_dict as a GPU run saves it (torch.amp.GradScaler("cuda").state_dict()).
GPU_SCALER_STATE = {"scale": 32768.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
                    "_growth_tracker": 17}


@pytest.mark.parametrize("save_mode,load_mode", [("keep", "auto"), ("auto", "keep"), ("auto", "float32")])
def test_scaler_state_round_trips_between_modes_and_from_a_gpu(unpatched, hardware, save_mode, load_mode):
    hardware({torch.float16: False, torch.bfloat16: False})
    patch_with(save_mode)
    model = nn.Linear(4, 4).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = _scaler()
    for _ in range(3):
        _step(model, opt, scaler, torch.randn(8, 4, device="cuda"))
    buffer = io.BytesIO()
    torch.save({"scaler": scaler.state_dict()}, buffer)
    saved = scaler.state_dict()
    patch_with(load_mode)
    restored = _scaler()
    buffer.seek(0)
    restored.load_state_dict(torch.load(buffer)["scaler"])
    assert restored.state_dict() == saved
    gpu = _scaler()
    gpu.load_state_dict(dict(GPU_SCALER_STATE))
    assert gpu.state_dict() == GPU_SCALER_STATE, "a GPU checkpoint's scaler state loads unchanged"
    assert gpu.get_scale() == 32768.0


# -- INFO line -----------------------------------------------------------------------------------------------
INFO_PROGRAM = """
import torch
a = torch.ones(4, 4, device="cuda")
for _ in range(3):
    with torch.autocast("cuda", dtype=torch.float16):
        a @ a
with torch.autocast("cuda", dtype=torch.bfloat16):
    a @ a
from torchdevice.ops import precision
print(precision.cpu_fast(torch.float16)[0], precision.cpu_fast(torch.bfloat16)[0])
"""


@pytest.mark.parametrize("mode", ["auto", "float32"])
def test_info_says_once_what_was_decided_and_why(mode):
    env = clean_env(PYTHONPATH=_src(), TORCHDEVICE_LOG_LEVEL="INFO", TORCHDEVICE_DEVICE="cpu",
                    TORCHDEVICE_PRECISION=mode)
    done = run_python("import torchdevice\n" + INFO_PROGRAM, env=env)
    assert done.returncode == 0, done.stderr
    fast = dict(zip(("float16", "bfloat16"), (word == "True" for word in done.stdout.split())))
    lines = [line for line in done.stderr.splitlines() if "autocast float16" in line or "autocast bfloat16" in line]
    assert len(lines) == 2, done.stderr
    for name in ("float16", "bfloat16"):
        line, = [line for line in lines if f"autocast {name}" in line]
        if mode == "float32" or not fast[name]:
            assert re.search(rf"autocast {name} -> float32 on this CPU: .+; TORCHDEVICE_PRECISION=keep to run {name}",
                             line), line
        else:
            assert f"autocast {name} runs as {name} on this CPU" in line, line


# -- the decision in torchdevice info ----------------------------------------------------------------------------
def test_describe_lists_decisions(unpatched, hardware):
    hardware({torch.float16: False, torch.bfloat16: True})
    patch_with("auto")
    with torch.autocast("cuda"):
        pass
    with torch.autocast("cuda", dtype=torch.bfloat16):
        pass
    described = precision.current().describe()
    assert described["mode"] == "auto"
    assert described["decisions"]["float16"]["runs"] == "float32"
    assert described["decisions"]["bfloat16"]["runs"] == "bfloat16"
    torchdevice.unpatch()
    assert precision.current() is None


# -- weights the program makes half ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda m: m.half(), lambda m: m.bfloat16(), lambda m: m.to(torch.bfloat16),
                                  lambda m: m.to("cuda", torch.float16), lambda m: m.to(dtype=torch.float16)])
def test_half_weights_stay_half_with_one_warning(unpatched, hardware, fresh_warnings, monkeypatch, make):
    hardware({torch.float16: False, torch.bfloat16: False})
    monkeypatch.setattr(precision, "measured", lambda dtype: 0.2)
    patch_with("auto")
    model = nn.Linear(4, 4).cuda()
    with pytest.warns(torchdevice.TorchDeviceWarning, match=r"computes (float16|bfloat16) slowly .*5\.0x the float32 "
                                                            r"time.*TORCHDEVICE_PRECISION=keep") as caught:
        out = make(model)
    assert out is model and next(model.parameters()).dtype in HALF, "the weights stay as the program asked"
    assert len([w for w in caught if issubclass(w.category, torchdevice.TorchDeviceWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchdevice.TorchDeviceWarning)
        make(nn.Linear(4, 4).cuda())  # once per program
        nn.Linear(4, 4).cuda().to(torch.float32)


@pytest.mark.parametrize("mode,fast", [("keep", False), ("auto", True)])
def test_no_half_weights_warning_when_fast_or_kept(unpatched, hardware, fresh_warnings, mode, fast):
    hardware({torch.float16: fast, torch.bfloat16: fast})
    patch_with(mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", torchdevice.TorchDeviceWarning)
        assert next(nn.Linear(4, 4).cuda().half().parameters()).dtype == torch.float16


def test_half_weights_factor_is_measured():
    ratio = precision.measure(torch.bfloat16, size=32, reps=1)
    assert ratio > 0


# -- end to end, under the installed autoload --------------------------------------------------------------------
# Written as public AMP training scripts are (PyTorch's AMP recipe, nanoGPT's train.py):
# autocast + GradScaler, checkpoint with model/optimizer/scaler state, resume.
AMP_SCRIPT = """
import os, sys
import torch
import torch.nn as nn

out_dir, phase, dtype = sys.argv[1], sys.argv[2], sys.argv[3]
device = "cuda" if torch.cuda.is_available() else "cpu"
if dtype == "script":  # nanoGPT's choice
    dtype = "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"
ptdtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
ctx = torch.amp.autocast(device_type="cuda", dtype=ptdtype) if hasattr(torch.amp, "autocast") else \\
    torch.cuda.amp.autocast(dtype=ptdtype)
torch.manual_seed(1337)
model = nn.Sequential(nn.Linear(16, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 4)).to(device)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
scaler = torch.cuda.amp.GradScaler(enabled=(dtype == "float16"))
x = torch.randn(256, 16)
y = (x[:, :4] * 2).softmax(-1)
ckpt_path = os.path.join(out_dir, "ckpt.pt")
start = 0
if phase == "resume":
    checkpoint = torch.load(ckpt_path, map_location=device)
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    start = checkpoint["iter_num"]
for it in range(start, start + 15):
    xb, yb = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    with ctx:
        logits = model(xb)
        loss = -(yb * torch.log_softmax(logits, dim=-1)).sum(-1).mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    print(f"{loss.item():.6f} {loss.dtype} {scaler.get_scale() if scaler.is_enabled() else 0}")
torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "iter_num": start + 15}, ckpt_path)
"""


@pytest.mark.venv
@pytest.mark.parametrize("mode,dtype", [("auto", "float16"), ("keep", "float16"), ("auto", "script")])
def test_amp_script_with_checkpoint_resume_under_autoload(wheel_python, tmp_path, mode, dtype):
    losses, scales = [], []
    for phase in ("start", "resume"):
        done = run_python(AMP_SCRIPT, python=wheel_python, args=[str(tmp_path), phase, dtype],
                          env=clean_env(TORCHDEVICE_PRECISION=mode))
        assert done.returncode == 0, done.stderr[-3000:]
        lines = [line.split() for line in done.stdout.split("\n") if line.strip()]
        assert len(lines) == 15
        assert all(dtype == "torch.float32" for _, dtype, _ in lines), "log_softmax computes in float32, as on a GPU"
        losses += [float(loss) for loss, _, _ in lines]
        scales += [float(scale) for _, _, scale in lines]
    if dtype == "float16":
        assert all(scale >= 2.0 ** 16 for scale in scales), "GradScaler scaled every step (65536 to start)"
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < losses[14] < losses[0], "the loss decreases, and resuming continues where it stopped"
    assert abs(losses[15] - losses[14]) < abs(losses[0] - losses[14]), "resumed from the checkpoint, not from scratch"
