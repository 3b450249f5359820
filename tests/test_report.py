"""The migration report (core/report.py): what it records, zero cost when off, processes."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest
import torch

import torchdevice
from conftest import clean_env, report_on, run_python
from torch_features import needs
from torchdevice.core import patch as _patch
from torchdevice.core import report, sites
from torchdevice.core.patch import EMULATED, UNSUPPORTED, Patch

HERE = os.path.abspath(__file__)
TORCHRUN = shutil.which("torchrun", path=os.path.dirname(sys.executable))


def line_of(marker):
    """The line number of this file that contains ``marker`` (in a comment)."""
    for number, text in enumerate(Path(HERE).read_text().splitlines(), start=1):
        if marker in text and "line_of(" not in text:
            return number
    raise AssertionError(marker)


def fresh_state():
    report._state = None
    report._apis.clear()


@pytest.fixture(params=["accelerated", "pure"])
def recording(tmp_path, request):
    """torchdevice active with the report on, with the C accelerator (where it was built) and
    without; yields a function returning this process's rows."""
    with report_on(tmp_path / "report.json", pure_python=request.param == "pure"):
        yield lambda: report.snapshot()


def rows_for(rows, api):
    return [r for r in rows["calls"] if r["api"] == api and r["file"] == HERE]


def test_records_redirected_calls_with_site_asked_used_and_count(recording):
    for _ in range(3):
        torch.zeros(2, device="cuda:1")  # site: zeros
    x = torch.ones(2)
    x.to("cuda")  # site: to
    x.to(torch.float64)  # dtype only: nothing redirected
    torch.zeros(2)  # no device: nothing redirected
    torch.zeros(2, device="cpu")  # an explicit CPU stays CPU: nothing redirected
    rows = recording()
    zeros = rows_for(rows, "torch.zeros")
    assert [(r["line"], r["asked"], r["used"], r["count"], r["kind"]) for r in zeros] == [
        (line_of("site: zeros"), "cuda:1", "cpu", 3, "redirected")]
    assert zeros[0]["function"] == "test_records_redirected_calls_with_site_asked_used_and_count"
    assert zeros[0]["via"] is None
    to = rows_for(rows, "Tensor.to")
    assert [(r["line"], r["asked"], r["count"]) for r in to] == [(line_of("site: to"), "cuda", 1)]


def test_calls_made_by_torch_for_the_user_are_attributed_to_the_user_line(recording):
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.cuda()  # site: module cuda
    rows = rows_for(recording(), "Tensor.cuda")
    assert len(rows) == 1
    row = rows[0]
    assert row["line"] == line_of("site: module cuda")
    assert row["count"] == 4  # two weights, two biases
    assert row["via"].startswith("torch.nn.modules.module:") and row["via"].endswith("Module.cuda")


def test_cuda_api_calls_are_recorded_from_user_code_only(recording):
    torch.cuda.synchronize()  # site: synchronize
    assert torch.cuda.is_available() is True  # site: is_available
    rows = recording()
    found = {(r["api"], r["line"], r["kind"]) for r in rows["calls"] if r["file"] == HERE}
    assert ("torch.cuda.synchronize", line_of("site: synchronize"), "no-op") in found
    assert ("torch.cuda.is_available", line_of("site: is_available"), "emulated") in found
    # torch's own calls of torch.cuda.* (it sees the truth) are not the program's CUDA calls
    assert all(not sites.classify_file(r["file"]) == sites.LIBRARY for r in rows["calls"])


def test_torch_device_and_cuda_device_classes_keep_working_while_recorded(recording):
    device = torch.device("cuda", 1)  # site: torch.device
    assert isinstance(device, torch.device) and device.type == "cuda" and torch.zeros(1, device=device).device.type == "cpu"
    assert pickle.loads(pickle.dumps(device)) == device
    with torch.cuda.device(1):  # site: cuda.device
        assert torch.cuda.current_device() == 1
    rows = recording()
    got = {(r["api"], r["line"], r["asked"]) for r in rows["calls"] if r["file"] == HERE}
    assert ("torch.device", line_of("site: torch.device"), "cuda:1") in got
    assert ("torch.cuda.device", line_of("site: cuda.device"), "cuda:1") in got


def test_report_off_installs_exactly_what_the_areas_built(unpatched):
    torchdevice.patch(strict=True, device="cpu")
    assert _patch._report_hook is None
    applied = _patch.REGISTRY.applied_records()
    assert applied
    for _, item in applied:
        value = item.replacement.__func__ if isinstance(item.replacement, staticmethod) else item.replacement
        assert not hasattr(value, "_torchdevice_recorder"), item.record.target


def test_report_module_not_even_imported_when_off():
    done = run_python("""
        import sys, torch, torchdevice
        torchdevice.patch(strict=True, device="cpu")
        torch.zeros(1, device="cuda")
        print("torchdevice.core.report" in sys.modules, "torchdevice.core.sites" in sys.modules)
    """, env=clean_env(TORCHDEVICE_DISABLE="1"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
    assert done.stderr == ""


def test_unpatch_restores_identity_with_report_on(tmp_path, unpatched):
    fresh_state()
    import torch.nn.modules.module  # noqa: F401

    before = {}
    try:
        torchdevice.patch(strict=True, device="cpu", report=str(tmp_path / "r.json"))
        report.discard()
        wrapped = 0
        for _, item in _patch.REGISTRY.applied_records():
            if item.record.key is not None:
                continue
            before[(id(item.owner), item.slot)] = (item.owner, item.slot, item.raw)
            value = item.replacement.__func__ if isinstance(item.replacement, staticmethod) else item.replacement
            wrapped += hasattr(value, "_torchdevice_recorder")
        assert wrapped > 50
    finally:
        torchdevice.unpatch()
        spool = report._state.spool
        fresh_state()
        os.environ.pop(report.SPOOL_ENV, None)
        shutil.rmtree(spool, ignore_errors=True)
    for owner, slot, raw in before.values():
        current = _patch._raw(owner, slot)
        assert current is raw, slot


def test_unsupported_calls_are_recorded_then_raise_unchanged(recording):
    import types

    module = types.ModuleType("td_fake_cuda")
    sys.modules["td_fake_cuda"] = module

    def make(original):
        def get_device_capability(device=None):
            raise RuntimeError("torch.cuda.get_device_capability is not supported on cpu: "
                               "use torch.backends.mps or check torch.cuda.is_available()\nsecond line")
        return get_device_capability

    try:
        record = Patch("td_fake_cuda", "get_device_capability", make, kind=UNSUPPORTED, create=True)
        fn = report.hook(record, module, _patch.MISSING, make(None))
        for _ in range(2):
            with pytest.raises(RuntimeError, match="not supported on cpu") as info:
                fn(0)  # site: unsupported
        assert info.traceback[-1].name == "get_device_capability"
    finally:
        del sys.modules["td_fake_cuda"]
    rows = recording()["unsupported"]
    assert [(r["api"], r["line"], r["count"], r["asked"], r["used"]) for r in rows] == [
        ("td_fake_cuda.get_device_capability", line_of("site: unsupported"), 2, "cuda:0", "error")]
    assert rows[0]["error"].startswith("torch.cuda.get_device_capability is not supported on cpu")
    assert "second line" not in rows[0]["error"]


def test_memory_is_bounded_by_distinct_sites(recording, monkeypatch):
    monkeypatch.setattr(report, "MAX_SITES", len(report._state.entries) + 3)
    namespace = {"torch": torch}
    for i in range(5):
        exec(compile(f"def f{i}():\n    torch.zeros(1, device='cuda')\n", f"/virtual/site_{i}.py", "exec"), namespace)
    for _ in range(10):
        for i in range(5):
            namespace[f"f{i}"]()
    rows = recording()
    virtual = [r for r in rows["calls"] if r["file"].startswith("/virtual/")]
    assert len(virtual) == 3 and all(r["count"] == 10 for r in virtual)
    assert rows["dropped"] == 20  # 2 further sites x 10 calls


def test_emulated_class_call_counted(recording):
    import types

    module = types.ModuleType("td_fake_cuda2")
    sys.modules["td_fake_cuda2"] = module

    class Event:
        def __init__(self, enable_timing=False):
            self.enable_timing = enable_timing

    try:
        record = Patch("torch.cuda", "Event", lambda original: Event, kind=EMULATED)  # a torch.cuda API
        Recorded = report.hook(record, torch.cuda, _patch.MISSING, Event)
        made = [Recorded(enable_timing=True) for _ in range(3)]  # site: event
        assert all(isinstance(e, Recorded) and isinstance(e, Event) for e in made)
        assert isinstance(Event(), Recorded), "instances made by the area's own class still pass isinstance"
        assert issubclass(Event, Recorded)
    finally:
        del sys.modules["td_fake_cuda2"]
    rows = [r for r in recording()["calls"] if r["api"] == "torch.cuda.Event"]
    assert [(r["line"], r["count"], r["kind"]) for r in rows] == [(line_of("site: event"), 3, "emulated")]


def test_line_numbers_resolved_per_instruction_are_merged_per_line(recording):
    x = torch.zeros(1)
    x.to("cuda"); x.to("cuda")  # noqa: E702  site: two on one line
    rows = rows_for(recording(), "Tensor.to")
    assert [(r["line"], r["count"]) for r in rows] == [(line_of("site: two on one line"), 2)]


SCRIPT = """
import torch
def train():
    for _ in range(4):
        torch.randn(2, device="cuda")
    torch.zeros(1, device="cuda:0").cuda()
train()
torch.cuda.synchronize()
print("done")
"""


def test_stderr_table_sorted_by_count(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    done = run_python(f"import torchdevice, runpy; runpy.run_path({str(script)!r}, run_name='__main__')",
                      env=clean_env(TORCHDEVICE_REPORT="1", TORCHDEVICE_DEVICE="cpu"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "done\n"
    lines = done.stderr.splitlines()
    assert lines[0].startswith("torchdevice migration report: 4 call site(s) ran on cpu instead of CUDA")
    assert lines[1].split() == ["count", "site", "api", "kind", "asked", "used"]
    body = [line.split() for line in lines[2:]]
    assert body[0] == ["4", "prog.py:5", "torch.randn", "redirected", "cuda", "cpu"]
    assert sorted(map(tuple, body[1:])) == sorted([
        ("1", "prog.py:6", "torch.zeros", "redirected", "cuda:0", "cpu"),
        ("1", "prog.py:6", "Tensor.cuda", "redirected", "cuda", "cpu"),
        ("1", "prog.py:8", "torch.cuda.synchronize", "no-op", "-", "cpu"),
    ])


def test_json_report_schema(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text(SCRIPT)
    out = tmp_path / "out" / "report.json"
    done = run_python(f"import torchdevice, runpy; runpy.run_path({str(script)!r}, run_name='__main__')",
                      env=clean_env(TORCHDEVICE_REPORT=str(out), TORCHDEVICE_DEVICE="cpu", TORCHDEVICE_DEVICE_COUNT="4"), cwd=tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    data = json.loads(out.read_text())
    assert set(data) == {"schema", "torchdevice", "torch", "target", "reason", "processes", "calls",
                         "unsupported", "dropped", "lost"}
    assert data["schema"] == report.SCHEMA and data["target"] == "cpu" and data["torch"] == torch.__version__
    # read when the report started (at import torch, inside runpy.run_path, which sets argv[0])
    assert data["processes"] == [{"pid": data["processes"][0]["pid"], "role": "main", "rank": None,
                                  "argv": [str(script)], "program": str(script), "argv_omitted": 0}]
    first = data["calls"][0]
    assert set(first) == {"file", "line", "function", "api", "kind", "asked", "used", "count", "via", "note",
                          "processes"}
    assert (first["file"], first["line"], first["function"], first["api"], first["count"]) == (
        str(script), 5, "train", "torch.randn", 4)
    assert [c["count"] for c in data["calls"]] == sorted((c["count"] for c in data["calls"]), reverse=True)
    assert data["unsupported"] == [] and data["dropped"] == 0 and data["lost"] == 0
    assert not any(name.startswith("torchdevice-report-") and os.path.isdir(os.path.join(tmp_path, name))
                   for name in os.listdir(tmp_path))


def test_code_generated_by_a_library_is_not_the_programs_site(recording):
    """dataclasses compile __init__ from a string in the class's module; torch 2.14's launcher
    config calls torch.get_device_module("cuda") from one. Only the program's own line counts."""
    library = {"__name__": "torch.distributed.launcher.fake", "__file__": torch.distributed.__file__,
               "torch": torch}
    exec(compile("\n\ndef generated():\n    return torch.zeros(1, device='cuda')\n", "<string>", "exec"), library)
    main_like = {"__name__": "__main__", "torch": torch}
    exec(compile("def typed():\n    return torch.zeros(1, device='cuda')\n", "<string>", "exec"), main_like)
    line = sys._getframe().f_lineno + 1
    library["generated"]()
    main_like["typed"]()
    rows = sorted((r["file"], r["line"], r["via"]) for r in recording()["calls"] if r["api"] == "torch.zeros")
    # The library's generated code is not a site: the program's line that called the library is.
    assert rows == sorted([("<string>", 2, None), (HERE, line, "torch.distributed.launcher.fake:generated")])


def test_entry_point_scripts_are_not_call_sites():
    """pip's console-script shims (torchrun) sit in the environment's scripts folder: torch 2.14's
    launcher calls torch.get_device_module("cuda") below one, which is no line of the program."""
    scripts = sysconfig.get_paths()["scripts"]
    assert sites.classify_file(os.path.join(scripts, "torchrun")) == sites.STDLIB
    assert sites.classify_file(os.path.join(os.path.dirname(scripts), "train.py")) == sites.USER


def test_torch_keeps_seeing_the_truth_through_recorders(recording):
    """torch's own modules get real answers from a recorded replacement, as without the report
    (a CPU build's torch._dynamo imports CUDA-only symbols when torch.cuda._is_compiled() says True)."""
    namespace = {"__name__": "torch._dynamo.device_interface", "torch": torch}
    exec("def ask():\n    return torch.cuda._is_compiled()\n", namespace)
    assert hasattr(torch.cuda._is_compiled, "_torchdevice_recorder"), "the call goes through a recorder"
    assert namespace["ask"]() is torch.backends.cuda.is_built(), "torch's module sees the build's truth"
    assert torch.cuda._is_compiled() is True, "user code sees the masquerade"


DATALOADER = """
import sys, torch
from torch.utils.data import DataLoader, Dataset

class Squares(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.full((2,), float(i * i), device="cuda")   # runs in the workers

if __name__ == "__main__":
    loader = DataLoader(Squares(), batch_size=2, num_workers=2, multiprocessing_context=sys.argv[1])
    total = sum(batch.to("cuda").sum().item() for batch in loader)
    print(sys.argv[1], total)
"""


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_dataloader_workers_are_merged_into_one_report(tmp_path, context):
    script = tmp_path / "loader.py"
    script.write_text(DATALOADER)
    out = tmp_path / "report.json"
    done = subprocess.run([sys.executable, "-m", "torchdevice", "run", "--report", str(out), str(script), context],
                          env=clean_env(TORCHDEVICE_DISABLE="1"), capture_output=True, text=True, cwd=tmp_path,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{context} {2.0 * sum(i * i for i in range(8))}\n"
    data = json.loads(out.read_text())
    roles = sorted(p["role"] for p in data["processes"])
    assert roles == ["child", "child", "main"]
    assert len({p["pid"] for p in data["processes"]}) == 3
    rows = {(r["api"], r["line"]): r for r in data["calls"]}
    worker = rows[("torch.full", 9)]
    assert (worker["count"], worker["processes"], worker["asked"]) == (8, 2, "cuda")
    main = rows[("Tensor.to", 13)]
    assert (main["count"], main["processes"]) == (4, 1)
    assert not os.environ.get(report.SPOOL_ENV)


RANKS = """
import os, torch
rank = int(os.environ["RANK"])
x = torch.ones(2, device=f"cuda:{rank}")
# One write per rank: both ranks share the launcher's stdout pipe, and print() writes each
# argument separately, so their words could interleave ("rankrank  10  cpucpu", seen in CI).
os.write(1, f"rank {rank} {x.device.type}\\n".encode())
"""


@pytest.mark.skipif(TORCHRUN is None, reason="torchrun is not installed next to this python")
def test_torchrun_ranks_are_merged_by_the_launcher(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    out = tmp_path / "report.json"
    env = clean_env(TORCHDEVICE_REPORT=str(out), OMP_NUM_THREADS="1")
    done = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node=2", str(script)], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.splitlines()) == ["rank 0 cpu", "rank 1 cpu"]
    data = json.loads(out.read_text())
    assert sorted((p["role"], p["rank"]) for p in data["processes"] if p["role"] == "child") == [
        ("child", 0), ("child", 1)]
    got = sorted((r["api"], r["line"], r["asked"], r["count"]) for r in data["calls"])
    assert got == [("torch.ones", 4, "cuda:0", 1), ("torch.ones", 4, "cuda:1", 1)]


def test_pin_memory_flag_and_method(recording):
    import types

    module = types.ModuleType("td_fake_data")
    sys.modules["td_fake_data"] = module

    class Loader:
        def __init__(self, dataset, batch_size=1, pin_memory=False, pin_memory_device=""):
            self.pin_memory = pin_memory

    try:
        record = Patch("td_fake_data.Loader", "__init__", lambda original: original, kind=_patch.NOOP)
        init = report.hook(record, Loader, Loader.__dict__["__init__"], Loader.__dict__["__init__"])
        Loader.__init__ = init
        Loader([1], pin_memory=True)  # site: pin flag
        Loader([1], 2, True)  # site: pin positional
        Loader([1])  # no pinning asked: not recorded
    finally:
        del sys.modules["td_fake_data"]
    x = torch.zeros(2)
    x.pin_memory()  # site: pin method
    rows = recording()["calls"]
    got = sorted((r["api"], r["line"], r["asked"]) for r in rows if r["file"] == HERE)
    assert got == sorted([
        ("Loader.__init__", line_of("site: pin flag"), "pin_memory=True"),
        ("Loader.__init__", line_of("site: pin positional"), "pin_memory=True"),
        ("Tensor.pin_memory", line_of("site: pin method"), ""),
    ])


def test_pass_through_report_says_nothing_was_redirected():
    text = report.render_text({"target": "cuda:0", "reason": "real CUDA is available: pass-through",
                               "processes": [{}], "calls": [], "unsupported": [], "dropped": 0})
    assert text == "torchdevice migration report: nothing was redirected (real CUDA is available: pass-through)\n"


def test_alternating_asks_at_one_instruction_are_counted_apart(recording):
    for index in [0, 1, 0, 1, 1]:
        torch.zeros(1, device=f"cuda:{index}")  # site: alternating
    rows = rows_for(recording(), "torch.zeros")
    assert sorted((r["line"], r["asked"], r["count"]) for r in rows) == [
        (line_of("site: alternating"), "cuda:0", 2), (line_of("site: alternating"), "cuda:1", 3)]


def test_hot_wrappers_record_in_their_own_frame(recording):
    # Factories, Tensor.to and Tensor.cuda are built from their recording variants: one Python
    # frame per call (or a C forwarder around it), whose __wrapped__ is what is installed when
    # the report is off.
    from torchdevice.ops.device import redirect

    call = type(torch.device).__call__
    assert call.__code__.co_filename == redirect.__file__ and torch.device._torchdevice_recorder is not None
    for fn in (torch.zeros, torch.Tensor.to, torch.Tensor.cuda):
        assert fn._torchdevice_recorder is not None
        code = getattr(fn, "_torchdevice_python", fn).__code__
        assert code.co_filename == redirect.__file__, fn
        plain = fn.__wrapped__
        plain_code = getattr(plain, "_torchdevice_python", plain).__code__
        assert plain_code.co_filename == redirect.__file__ and plain_code is not code
        assert not hasattr(plain, "_torchdevice_recorder")
    seen = []

    class Probe(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            if func.__name__ == "to":
                frame = sys._getframe(1)
                seen.append(frame.f_back.f_code.co_filename)
            return super().__torch_function__(func, types, args, kwargs or {})

    torch.zeros(1).as_subclass(Probe).to("cuda")
    assert seen == [HERE], "the wrapper's caller is this file: no recorder frame between"


def test_recording_variants_count_what_was_asked(recording):
    x = torch.ones(2)
    cuda1 = torch.device("cuda", 1)  # site: fused device pair
    for spec in ["cuda", cuda1, "cuda", cuda1, "cuda"]:
        x.to(spec)  # site: fused to alternating
    for _ in range(3):
        x.to(device="cuda:0")  # site: fused to keyword
        x.to(torch.float64)  # site: fused to dtype
        x.to(torch.ones(1, dtype=torch.float16))  # site: fused to tensor
        x.to("cpu")  # site: fused to cpu
        x.cuda()  # site: fused cuda
        x.cuda(1)  # site: fused cuda index
        torch.ones(1, device=0)  # site: fused ones index
        torch.ones(1, device=torch.device("cpu"))  # site: fused ones cpu
        torch.device("cuda:1")  # site: fused device string
        torch.device(2)  # site: fused device index
    assert torch.device(type="cuda") == torch._C.device("cuda")  # site: fused device keyword
    rows = recording()["calls"]
    got = sorted((r["api"], r["line"], r["asked"], r["count"]) for r in rows if r["file"] == HERE)
    assert got == sorted([
        ("torch.device", line_of("site: fused device pair"), "cuda:1", 1),
        ("torch.device", line_of("site: fused device string"), "cuda:1", 3),
        ("torch.device", line_of("site: fused device index"), "cuda:2", 3),
        ("torch.device", line_of("site: fused device keyword"), "cuda", 1),
        ("Tensor.to", line_of("site: fused to alternating"), "cuda", 3),
        ("Tensor.to", line_of("site: fused to alternating"), "cuda:1", 2),
        ("Tensor.to", line_of("site: fused to keyword"), "cuda:0", 3),
        ("Tensor.cuda", line_of("site: fused cuda"), "cuda", 3),
        ("Tensor.cuda", line_of("site: fused cuda index"), "cuda:1", 3),
        ("torch.ones", line_of("site: fused ones index"), "cuda:0", 3),
    ])


def test_report_caches_hold_no_tensors(recording):
    import gc
    import weakref

    x = torch.ones(2)
    other = torch.ones(1, dtype=torch.float16)
    ref = weakref.ref(other)
    for _ in range(3):
        x.to(other)
        report._asked_device(other)
    del other
    gc.collect()
    assert ref() is None, "a tensor passed as a device argument is kept alive by the report"
    assert all(type(spec) in report._HOLDABLE for spec in report._SPEC_CACHE)


def test_recording_tensor_to_passes_the_call_shape_through(recording):
    from test_hot_paths import TO_CASES, Recorder

    for call, args, kwargs in TO_CASES:
        Recorder.calls.clear()
        call(torch.zeros(2).as_subclass(Recorder))
        assert Recorder.calls == [(args, kwargs)]


# -- issue 18 §15: deprecation wrappers are not call sites; autocast regions are listed ------------
@needs("torch.amp.GradScaler")  # before it (2.2), GradScaler's construction runs no recorded patch
def test_grad_scaler_is_attributed_to_the_programs_line(recording):
    """torch.cuda.amp.GradScaler.__init__ is wrapped by typing_extensions' @deprecated (torch >= 2.4):
    the wrapper's frame in site-packages is not the program's line."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.cuda.amp.GradScaler()  # site: legacy scaler
        torch.amp.GradScaler("cuda")  # site: scaler
    rows = [r for r in recording()["calls"] if "GradScaler" in r["api"]]
    assert rows, "GradScaler construction is recorded"
    assert all(r["file"] == HERE for r in rows), [(r["file"], r["line"]) for r in rows]
    assert sorted((r["api"], r["line"], r["asked"]) for r in rows) == [
        ("GradScaler.__init__", line_of("site: legacy scaler"), "cuda"),
        ("GradScaler.__init__", line_of("site: scaler"), "cuda")]


def test_deprecation_wrappers_pass_the_site_through_whoever_wrote_them(recording, tmp_path):
    """The rule is the wrapper's shape (it holds the torch function it calls), not a file name:
    typing_extensions' and warnings' @deprecated, a wrapt-style wrapper(wrapped, ...), a class
    decorated as a whole; a third-party library's own function that calls torch is still a site."""
    import warnings

    import typing_extensions

    library = tmp_path / "site-packages" / "thirdparty.py"
    library.parent.mkdir()
    library.write_text(textwrap.dedent("""
        import functools

        def deprecate(fn):
            @functools.wraps(fn)
            def wrapper(*args, **kwargs):
                return fn(*args, **kwargs)
            return wrapper

        def call_wrapped(wrapped, instance, args, kwargs):
            return wrapped(*args, **kwargs)

        def prepare(model):
            return model.cuda()  # a library's own work: its own site
    """))
    namespace = {"__name__": "thirdparty", "__file__": str(library)}
    exec(compile(library.read_text(), str(library), "exec"), namespace)
    cuda = torch.nn.Module.cuda
    wrappers = {"typing_extensions": typing_extensions.deprecated("old")(cuda),
                "hand-made": namespace["deprecate"](cuda),
                "wrapt-style": lambda model: namespace["call_wrapped"](cuda, None, (model,), {})}
    if hasattr(warnings, "deprecated"):
        wrappers["warnings"] = warnings.deprecated("old")(cuda)
    expected = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, wrapped in wrappers.items():
            wrapped(torch.nn.Linear(1, 1))  # site: through a wrapper
        namespace["prepare"](torch.nn.Linear(1, 1))
    rows = [r for r in recording()["calls"] if r["api"] == "Tensor.cuda"]
    got = sorted((r["file"], r["line"], r["count"], r["via"]) for r in rows)
    via = "torch.nn.modules.module:Module.cuda"
    expected = [(HERE, line_of("site: through a wrapper"), 2 * len(wrappers), via),
                (str(library), 14, 2, via)]
    assert got == sorted(expected)


def test_autocast_regions_made_for_cuda_are_listed(recording):
    import warnings

    with torch.autocast("cuda"):  # site: autocast
        pass
    for _ in range(2):
        with torch.amp.autocast("cuda", dtype=torch.bfloat16):  # site: amp autocast
            pass
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with torch.cuda.amp.autocast():  # site: legacy autocast
            pass
    with torch.autocast("cpu"):  # a CPU region: nothing redirected
        pass

    @torch.autocast("cuda")  # site: autocast decorator
    def step():
        return torch.ones(1)

    step()
    step()
    rows = sorted((r["api"], r["line"], r["asked"], r["used"], r["count"], r["kind"])
                  for r in recording()["calls"] if "autocast" in r["api"] and r["file"] == HERE)
    assert rows == sorted([
        ("torch.autocast", line_of("site: autocast"), "cuda", "cpu", 1, "redirected"),
        ("torch.autocast", line_of("site: amp autocast"), "cuda", "cpu", 2, "redirected"),
        ("torch.cuda.amp.autocast", line_of("site: legacy autocast"), "cuda", "cpu", 1, "redirected"),
        ("torch.autocast", line_of("site: autocast decorator"), "cuda", "cpu", 1, "redirected"),
    ])
