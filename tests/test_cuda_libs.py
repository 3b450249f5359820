"""CUDA library front-ends in torch.cuda (nvtx, cudart, jiterator, comm, nccl, tunable, ...) on the CPU target."""
import importlib

import pytest
import torch

from torch_features import needs
from torchdevice.ops.device.errors import TargetUnsupportedError


def test_nvtx_ranges_show_in_the_profiler(patched):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert torch.cuda.nvtx.range_push("outer") == 0
        assert torch.cuda.nvtx.range_push("inner") == 1
        torch.ones(4).sum()
        assert torch.cuda.nvtx.range_pop() == 1
        assert torch.cuda.nvtx.range_pop() == 0
        handle = torch.cuda.nvtx.range_start("across")
        torch.cuda.nvtx.range_end(handle)
        torch.cuda.nvtx.mark("instant")
        with torch.cuda.nvtx.range("step {}", 3):
            torch.ones(2).sum()
    names = {event.name for event in prof.events()}
    assert {"outer", "inner", "across", "instant", "step 3"} <= names
    assert torch.cuda.nvtx.range_pop() == -1, "a pop without a push reports -1, as NVTX"


def test_cudart_stand_in(patched):
    runtime = torch.cuda.cudart()
    assert runtime.cudaProfilerStart() == 0 and runtime.cudaProfilerStop() == 0
    torch.cuda.check_error(runtime.cudaProfilerStart())
    x = torch.ones(16)
    assert runtime.cudaHostRegister(x.data_ptr(), x.numel() * x.element_size(), 0) == runtime.cudaError.success
    assert runtime.cudaHostUnregister(x.data_ptr()) == 0
    free, total = runtime.cudaMemGetInfo(0)
    assert 0 < free <= total == torch.cuda.mem_get_info()[1]
    assert runtime.cudaGetErrorString(2) == "out of memory"
    with pytest.raises(AttributeError, match="cudaGraphLaunch is not provided on the cpu target"):
        runtime.cudaGraphLaunch
    with pytest.raises(TargetUnsupportedError, match="cudaStreamCreate.*cpu target.*torch.cuda.Stream"):
        runtime.cudaStreamCreate()


def test_check_error_and_cuda_error(patched):
    torch.cuda.check_error(0)
    with pytest.raises(torch.cuda.CudaError) as info:
        torch.cuda.check_error(2)
    assert str(info.value) == "out of memory (2)" and isinstance(info.value, RuntimeError)
    assert str(torch.cuda.CudaError(34)) == "device not ready (34)"


def test_profiler_start_stop_are_no_ops(patched):
    with torch.cuda.profiler.profile():
        y = torch.ones(3).sum()
    assert y.item() == 3
    assert torch.cuda.profiler.start() is None and torch.cuda.profiler.stop() is None


def test_jiterator_raises_clear_error_when_called(patched):
    fn = torch.cuda.jiterator._create_jit_fn("template <typename T> T f(T x) { return -x; }")
    with pytest.raises(TargetUnsupportedError) as info:
        fn(torch.ones(3))
    message = str(info.value)
    assert "torch.cuda.jiterator._create_jit_fn" in message and "cpu target" in message
    assert "torch operations" in message
    multi = torch.cuda.jiterator._create_multi_output_jit_fn("...", num_outputs=2)
    with pytest.raises(TargetUnsupportedError, match="_create_multi_output_jit_fn"):
        multi(torch.ones(3))


def test_comm_on_the_single_target(patched):
    comm = importlib.import_module("torch.cuda.comm")
    x = torch.arange(6.0).reshape(3, 2)
    copies = comm.broadcast(x, devices=[0, 1])
    assert len(copies) == 2 and all(torch.equal(c, x) for c in copies)
    copies[0].add_(1)
    assert torch.equal(copies[1], x), "each device holds its own copy"
    outs = [torch.empty(3, 2), torch.empty(3, 2)]
    assert comm.broadcast(x, out=outs)[1] is outs[1] and torch.equal(outs[1], x)
    with pytest.raises(RuntimeError, match="Exactly one of 'devices' and 'out'"):
        comm.broadcast(x)
    assert torch.equal(comm.reduce_add([x, x, x]), 3 * x)
    with pytest.raises(ValueError, match="input 1 has invalid size"):
        comm.reduce_add([x, torch.ones(2)])
    parts = comm.scatter(torch.arange(10.0), devices=[0, 1])
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    parts = comm.scatter(torch.arange(10.0), devices=[0, 1], chunk_sizes=[3, 7])
    assert [len(p) for p in parts] == [3, 7]
    assert torch.equal(comm.gather(parts), torch.arange(10.0))
    grouped = comm.broadcast_coalesced([x, 2 * x], devices=[0, 1])
    assert len(grouped) == 2 and torch.equal(grouped[1][1], 2 * x)
    summed = comm.reduce_add_coalesced([[x, 2 * x], [x, 2 * x]])
    assert torch.equal(summed[0], 2 * x) and torch.equal(summed[1], 4 * x)
    assert torch.nn.parallel.comm.broadcast is comm.broadcast


def test_nccl_names(patched):
    assert torch.cuda.nccl.is_available([torch.ones(2)]) is False
    for name, args in (("version", ()), ("all_reduce", ([torch.ones(2)],)), ("unique_id", ())):
        with pytest.raises(TargetUnsupportedError) as info:
            getattr(torch.cuda.nccl, name)(*args)
        message = str(info.value)
        assert f"torch.cuda.nccl.{name}" in message and "cpu target" in message and "torch.distributed" in message


@needs("torch.cuda.tunable")
def test_tunable_settings_are_kept(patched):
    tunable = torch.cuda.tunable
    assert tunable.is_enabled() is False
    tunable.enable(True)
    tunable.set_max_tuning_iterations(7)
    tunable.set_filename("results.csv")
    assert tunable.is_enabled() is True and tunable.get_max_tuning_iterations() == 7
    assert tunable.get_filename() == "results.csv"
    assert tunable.get_results() == () and tunable.read_file() is False
    if hasattr(tunable, "write_file"):  # torch 2.4 to 2.5
        assert tunable.write_file() is False and tunable.write_file_on_exit(False) is None
    if hasattr(tunable, "tune_gemm_in_file"):  # torch >= 2.6
        with pytest.raises(TargetUnsupportedError, match="tune_gemm_in_file.*cpu target"):
            tunable.tune_gemm_in_file("untuned.csv")


def test_legacy_sparse_types(patched):
    indices = torch.tensor([[0, 1], [1, 0]])
    with pytest.warns(UserWarning, match="deprecated"):  # torch's own notice for the legacy constructor
        sparse = torch.cuda.sparse.FloatTensor(indices, torch.tensor([1.0, 2.0]), (2, 2))
    assert sparse.layout == torch.sparse_coo and sparse.dtype == torch.float32
    assert sparse.to_dense().tolist() == [[0.0, 1.0], [2.0, 0.0]]
    assert isinstance(sparse, torch.cuda.sparse.FloatTensor)
    assert not isinstance(sparse, torch.cuda.sparse.DoubleTensor)
    assert not isinstance(torch.ones(2), torch.cuda.sparse.FloatTensor)


@needs("torch.cuda.current_solver_handle", "torch.cuda.GreenContext")
def test_handles_and_green_context_are_clear_errors(patched):
    with pytest.raises(TargetUnsupportedError, match=r"current_blas_handle\(\).*cpu target.*torch.matmul"):
        torch.cuda.current_blas_handle()
    with pytest.raises(TargetUnsupportedError, match=r"current_solver_handle\(\).*cpu target.*torch.linalg"):
        torch.cuda.current_solver_handle()
    with pytest.raises(TargetUnsupportedError, match="torch.cuda.GreenContext.*cpu target"):
        torch.cuda.GreenContext.create(num_sms=8)


def test_backend_flags_stay_settable(patched):
    cudnn, cuda = torch.backends.cudnn, torch.backends.cuda
    saved = (cudnn.benchmark, cudnn.deterministic, cudnn.enabled, cudnn.allow_tf32, cuda.matmul.allow_tf32)
    try:
        cudnn.benchmark = True
        cudnn.deterministic = True
        cudnn.allow_tf32 = False
        cuda.matmul.allow_tf32 = True
        assert (cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32, cuda.matmul.allow_tf32) == \
            (True, True, False, True)
        with cudnn.flags(enabled=False, benchmark=False):
            assert cudnn.enabled is False and cudnn.benchmark is False
        assert cudnn.benchmark is True
        cuda.enable_flash_sdp(False)
        assert cuda.flash_sdp_enabled() is False
        cuda.enable_flash_sdp(True)
        assert cuda.flash_sdp_enabled() is True
        # the truth about the libraries: there is no cuDNN and this build has no CUDA
        # (a CPU build has no cuDNN; a CUDA build ships the library, so torch says it is available)
        assert cudnn.is_available() is torch._C._has_cudnn
        assert (cudnn.version() is None) is (not torch._C._has_cudnn)
        assert cuda.is_built() is torch.backends.cuda.is_built()
        x = torch.randn(8, 8, device="cuda")
        assert torch.allclose(x @ x, torch.mm(x, x)), "matmul runs with the flags set"
    finally:
        (cudnn.benchmark, cudnn.deterministic, cudnn.enabled, cudnn.allow_tf32, cuda.matmul.allow_tf32) = saved


def test_comm_copies_made_while_patched_follow_unpatch(unpatched):
    import torchdevice

    torchdevice.patch(strict=True, device="cpu")
    comm = importlib.import_module("torch.cuda.comm")  # may bind the patched functions
    x = torch.ones(2)
    assert len(comm.broadcast(x, devices=[0])) == 1
    torchdevice.unpatch()
    original = torch.nn.parallel.comm.broadcast
    with pytest.raises(Exception) as via_copy:
        comm.broadcast(x, devices=[0])
    with pytest.raises(Exception) as via_original:
        original(x, devices=[0])
    assert type(via_copy.value) is type(via_original.value) and str(via_copy.value) == str(via_original.value)


def test_no_public_function_answers_with_raw_cuda_errors(patched):
    """Call every callable of torch.cuda.__all__ (and of its patched submodules) that takes no arguments:
    each returns, or raises an error that names the cpu target, never torch's raw CUDA messages."""
    import types
    import warnings


    def probe(name, obj, failures):
        if isinstance(obj, types.ModuleType) or not callable(obj):
            return
        try:
            result = obj()
            if hasattr(result, "__enter__"):
                with result:
                    pass
        except TypeError as exc:
            if "missing" not in str(exc) and "argument" not in str(exc):
                failures.append(f"{name}: {exc!r}")
        except Exception as exc:  # noqa: BLE001 - the message is what is checked
            text = str(exc)
            if "not compiled" in text or "dummy base class" in text or "cpu target" not in text:
                failures.append(f"{name}: {type(exc).__name__}: {text}")

    failures = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in torch.cuda.__all__:
            probe(f"torch.cuda.{name}", getattr(torch.cuda, name), failures)
        for sub in ("nvtx", "tunable", "nccl", "memory", "profiler"):
            module = getattr(torch.cuda, sub, None)  # tunable: not in every torch
            for name in getattr(module, "__all__", ()):
                probe(f"torch.cuda.{sub}.{name}", getattr(module, name), failures)
    assert failures == []
