"""Training libraries configured for an NVIDIA GPU take their GPU paths on the target.

Each test runs one unmodified driver program from tests/libs/ (written as the
library's documentation shows a GPU user) in a fresh interpreter where the
torchdevice autoload hook is active, and checks what the library itself
reports: its accelerator and device, the mixed-precision machinery in use
(autocast dtype seen inside the model, the GradScaler), and that training
lowers the loss or generation returns tokens. Models come from configs with
random weights; nothing is downloaded (HF_HUB_OFFLINE=1).

These tests need lightning, transformers and accelerate installed beside the
torch under test: `tox -e integration` (see docs/compatibility.md, "Libraries").
They are skipped, library by library, where a library is not installed.
"""
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import clean_env

pytestmark = pytest.mark.integration

DRIVERS = Path(__file__).parent / "libs"
TARGET_TYPE = "cpu"  # the tests run with TORCHDEVICE_DEVICE unset on a CPU-only machine


def _installed(name):
    return importlib.util.find_spec(name) is not None


needs_lightning = pytest.mark.skipif(not _installed("lightning"), reason="lightning is not installed")
needs_transformers = pytest.mark.skipif(not (_installed("transformers") and _installed("accelerate")),
                                        reason="transformers/accelerate are not installed")
needs_accelerate = pytest.mark.skipif(not _installed("accelerate"), reason="accelerate is not installed")


class DriverFailed(Exception):
    """The driver program exited without a RESULT line (the library raised)."""


def _env(tmp_path, **extra):
    return clean_env(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"),
                     TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore", **extra)


def run_driver(tmp_path, name, *args, timeout=600, **env):
    """Run tests/libs/<name> and return its RESULT dicts (one per process that printed one)."""
    proc = subprocess.run([sys.executable, str(DRIVERS / name), *args], env=_env(tmp_path, **env), cwd=tmp_path,
                          capture_output=True, text=True, timeout=timeout)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not results:
        tail = "\n".join(proc.stderr.strip().splitlines()[-25:])
        raise DriverFailed(f"{name} {' '.join(args)} exited {proc.returncode}:\n{tail}")
    return results


@pytest.fixture(scope="module", autouse=True)
def autoload_is_active(tmp_path_factory):
    """The drivers rely on the installed autoload hook, as a user's program does."""
    code = "import torch, torchdevice; s = torchdevice.status(); print(s['active'], s['target'])"
    proc = subprocess.run([sys.executable, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", TARGET_TYPE], (
        "torchdevice is not active in a plain `python` of this environment (install it with pip, "
        f"e.g. tox -e integration): {proc.stdout} {proc.stderr[-2000:]}")


def decreased(losses, factor=0.8):
    return len(losses) >= 2 and losses[-1] < losses[0] * factor


# -- Lightning ------------------------------------------------------------------------------
def check_lightning(result, precision_dtype, scaler):
    assert result["accelerator"] == "CUDAAccelerator", "Lightning chose its CUDA accelerator"
    assert result["root_device"].startswith("cuda"), "the strategy's root device is a CUDA device"
    assert result["module_device"].startswith("cuda"), "LightningModule.device reports the CUDA device"
    assert result["batch_device_type"] == TARGET_TYPE, "batches really live on the target"
    assert result["forward_dtype"] == precision_dtype, "autocast ran in the requested precision"
    assert result["scaler"] == scaler
    if scaler:
        assert result["scaler_enabled"] is True, "the GradScaler is really scaling"
    assert decreased(result["epoch_losses"], 0.5), result["epoch_losses"]


@needs_lightning
def test_lightning_gpu_16_mixed(tmp_path):
    [result] = run_driver(tmp_path, "lightning_train.py", "gpu", "1", "16-mixed")
    assert result["precision_plugin"] == "MixedPrecision" and result["amp_device"] == "cuda"
    check_lightning(result, "float16", "GradScaler")


@needs_lightning
def test_lightning_gpu_bf16_mixed(tmp_path):
    [result] = run_driver(tmp_path, "lightning_train.py", "gpu", "1", "bf16-mixed")
    assert result["precision_plugin"] == "MixedPrecision" and result["amp_device"] == "cuda"
    check_lightning(result, "bfloat16", None)


@needs_lightning
def test_lightning_cuda_auto_devices(tmp_path):
    [result] = run_driver(tmp_path, "lightning_train.py", "cuda", "auto", "32-true")
    assert result["num_devices"] == 1, "devices='auto' counts the masqueraded devices (TORCHDEVICE_DEVICE_COUNT=1)"
    check_lightning(result, "float32", None)


@needs_lightning
def test_lightning_ddp_two_processes_on_one_target(tmp_path):
    """devices=2 needs two masqueraded devices: TORCHDEVICE_DEVICE_COUNT=2 (both ranks share the target)."""
    results = run_driver(tmp_path, "lightning_train.py", "gpu", "2", "16-mixed", "ddp", TORCHDEVICE_DEVICE_COUNT="2")
    by_rank = {r["global_rank"]: r for r in results}
    assert sorted(by_rank) == [0, 1]
    for rank, result in by_rank.items():
        assert result["strategy"] == "DDPStrategy" and result["world_size"] == 2
        assert result["root_device"] == f"cuda:{rank}"
        check_lightning(result, "float16", "GradScaler")
    assert by_rank[0]["param_sum"] == pytest.approx(by_rank[1]["param_sum"], abs=1e-6), "DDP kept ranks in sync"


@needs_lightning
def test_lightning_ddp_needs_enough_masqueraded_devices(tmp_path):
    """With the default count of 1, asking for two GPUs fails as on a one-GPU machine."""
    with pytest.raises(DriverFailed) as info:
        run_driver(tmp_path, "lightning_train.py", "gpu", "2", "32-true", "ddp")
    assert "MisconfigurationException" in str(info.value) and "[0, 1]" in str(info.value)


# -- transformers ---------------------------------------------------------------------------
def check_trainer(result, dtype, scaler):
    assert result["args_device"] == "cuda:0" and result["n_gpu"] == 1, "TrainingArguments found the GPU"
    assert result["accelerator_device"].startswith("cuda")
    assert result["native_amp"] is True and result["scaler"] == scaler
    assert result["lm_head_dtype"] == dtype, "the model ran under autocast in the requested dtype"
    assert result["activation_device_type"] == TARGET_TYPE
    assert decreased(result["losses"]), result["losses"]


@needs_transformers
def test_transformers_trainer_fp16(tmp_path):
    [result] = run_driver(tmp_path, "transformers_train.py", "fp16")
    assert result["mixed_precision"] == "fp16"
    check_trainer(result, "float16", "GradScaler")


@needs_transformers
def test_transformers_trainer_bf16(tmp_path):
    [result] = run_driver(tmp_path, "transformers_train.py", "bf16")
    assert result["mixed_precision"] == "bf16"
    check_trainer(result, "bfloat16", None)


@needs_transformers
@pytest.mark.parametrize("keyword", ["dtype", "torch_dtype"])
def test_transformers_from_pretrained_device_map_auto_generate(tmp_path, keyword):
    [result] = run_driver(tmp_path, "transformers_generate.py", keyword)
    assert result["param_dtype"] == "float16"
    assert result["new_tokens"] == 6 and len(result["text"].split()) == 6, "generate returned new tokens"
    assert result["input_device_type"] == TARGET_TYPE
    placement = result["hf_device_map"] or result["planned_device_map"]
    assert placement == {"": "0"}, "device_map='auto' placed the whole model on GPU 0"


@needs_transformers
@pytest.mark.parametrize("device", ["0", "cuda", "cuda:0"])
def test_transformers_pipeline_on_gpu(tmp_path, device):
    [result] = run_driver(tmp_path, "transformers_pipeline.py", device)
    assert result["pipeline_device"].startswith("cuda"), "the pipeline runs on the CUDA device it was given"
    assert result["model_device"] == TARGET_TYPE, "the weights really live on the target"
    assert result["new_words"] == 5 and all(w.startswith("w") for w in result["generated_text"].split())


# -- accelerate -----------------------------------------------------------------------------
@needs_accelerate
def test_accelerate_fp16_prepare_backward_state(tmp_path):
    [result] = run_driver(tmp_path, "accelerate_train.py", "fp16")
    assert result["device"].startswith("cuda") and result["distributed_type"] == "DistributedType.NO"
    assert result["native_amp"] is True and result["scaler"] == "GradScaler"
    assert result["params_restored"] is True, "load_state restored the saved weights"
    assert result["scale_restored"] == result["scale_saved"], "load_state restored the loss scale"
    assert result["batch_device_type"] == TARGET_TYPE
    assert decreased(result["epoch_losses"], 0.5), result["epoch_losses"]
    assert result["scaler_enabled"] is True and result["scale_saved"] > 1.0, "the GradScaler is really scaling"
    assert result["layer_dtype"] == "float16", "accelerate's autocast ran the model in float16"


@needs_accelerate
def test_accelerate_memory_planning_reads_cuda_memory(tmp_path):
    [result] = run_driver(tmp_path, "accelerate_memory.py")
    assert result["dispatch_matches"] is True, "the dispatched model computes what the plain model does"
    split = set(result["split_map"].values())
    assert split == {"0", "cpu"}, "a small GPU budget splits the model between GPU 0 and the CPU"
    assert result["max_memory"].get("0", 0) > 0, "get_max_memory found GPU 0's free memory"
    assert result["auto_map"] == {"": "0"}, "with the real budget the whole model fits on GPU 0"
    assert "0" in result["balanced_keys"]


def check_accelerate_state(result, mode, device, distributed_type, world, rank):
    assert result["device"] == device and result["distributed_type"] == distributed_type
    assert result["num_processes"] == world and result["process_index"] == rank
    assert result["is_main_process"] is (rank == 0)
    assert result["native_amp"] is True and result["autocast_cuda"] is True, "accelerate's CUDA autocast is on"
    assert result["layer_dtype"] == {"fp16": "float16", "bf16": "bfloat16"}[mode]
    assert result["scaler"] == ("GradScaler" if mode == "fp16" else None)
    assert result["scaler_enabled"] is (True if mode == "fp16" else None)
    assert result["input_device_type"] == TARGET_TYPE
    assert result["losses"][-1] < result["losses"][0], "the prepared training steps lowered the loss"


@needs_accelerate
@pytest.mark.parametrize("mode", ["fp16", "bf16"])
def test_accelerate_single_process_state(tmp_path, mode):
    """accelerate decides from torch.accelerator.current_accelerator(): a CUDA device, so CUDA autocast."""
    [result] = run_driver(tmp_path, "accelerate_state.py", mode)
    check_accelerate_state(result, mode, "cuda", "DistributedType.NO", 1, 0)
    assert result["gathered"] == [0.0]


@needs_accelerate
def test_accelerate_two_processes_under_torchrun(tmp_path):
    """torchrun --nproc_per_node=2: both ranks see MULTI_GPU with two processes, DDP keeps them in sync."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0",
                           str(DRIVERS / "accelerate_state.py"), "fp16"],
                          env=_env(tmp_path, TORCHDEVICE_DEVICE_COUNT="2", OMP_NUM_THREADS="1"), cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    results = [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and len(results) == 2, proc.stderr[-3000:]
    by_rank = {r["process_index"]: r for r in results}
    assert sorted(by_rank) == [0, 1]
    for rank, result in by_rank.items():
        check_accelerate_state(result, "fp16", f"cuda:{rank}", "DistributedType.MULTI_GPU", 2, rank)
        assert result["wrapped"] == "DistributedDataParallel"
        assert result["gathered"] == [0.0, 1.0], "accelerator.gather collected one value per rank"
    assert by_rank[0]["param_sum"] == pytest.approx(by_rank[1]["param_sum"], abs=1e-9), "DDP kept ranks in sync"
