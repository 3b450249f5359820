"""hatchling build hook: the autoload .pth for editable installs, and the optional C accelerator.

* Regular wheels get the .pth and its trampoline from ``force-include`` in
  pyproject.toml; hatchling leaves that out of editable wheels, so this hook
  adds them there.
* ``torchdevice._speedups`` (src/torchdevice/_speedups.c) is compiled with the
  building interpreter's own compiler settings (sysconfig: CC, CFLAGS,
  CCSHARED, LDSHARED, the include folder), for CPython with the GIL only. A
  wheel with it is tagged for the platform; an editable install gets it next
  to the sources (src/torchdevice, ignored by git). When compiling fails (no
  compiler, no Python headers), the wheel is pure Python, with one line saying
  so: torchdevice works the same without it, a little slower per call
  (docs/performance.md).
"""
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

_SOURCE = os.path.join("src", "torchdevice", "_speedups.c")


def _compile(root, workdir):
    """Build the extension in ``workdir``; return its path, or raise RuntimeError saying why not."""
    if sys.implementation.name != "cpython":
        raise RuntimeError(f"{sys.implementation.name} is not CPython")
    if sysconfig.get_config_var("Py_GIL_DISABLED"):
        raise RuntimeError("free-threaded CPython builds are not supported")
    get = sysconfig.get_config_var
    cc, ldshared, suffix = get("CC"), get("LDSHARED"), get("EXT_SUFFIX")
    if not cc or not ldshared or not suffix:
        raise RuntimeError("this interpreter records no compiler settings (sysconfig CC/LDSHARED)")
    include = sysconfig.get_paths()["include"]
    if not os.path.exists(os.path.join(include, "Python.h")):
        raise RuntimeError(f"Python.h not found in {include} (install the Python development headers)")
    obj = os.path.join(workdir, "_speedups.o")
    out = os.path.join(workdir, "_speedups" + suffix)
    steps = (
        shlex.split(cc) + shlex.split(get("CFLAGS") or "") + shlex.split(get("CCSHARED") or "")
        + ["-I", include, "-c", os.path.join(root, _SOURCE), "-o", obj],
        shlex.split(ldshared) + [obj, "-o", out],
    )
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True)
        except OSError as exc:
            raise RuntimeError(f"{step[0]}: {exc}") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            raise RuntimeError(f"{step[0]} failed: {lines[-1] if lines else 'exit ' + str(done.returncode)}")
    return out


class AutoloadPthHook(BuildHookInterface):
    def initialize(self, version, build_data):
        if version == "editable":
            build_data["force_include_editable"]["src/torchdevice_autoload.pth"] = "torchdevice_autoload.pth"
            build_data["force_include_editable"]["src/_torchdevice_trampoline.py"] = "_torchdevice_trampoline.py"
        self._workdir = tempfile.mkdtemp(prefix="torchdevice-build-")
        try:
            built = _compile(self.root, self._workdir)
        except RuntimeError as exc:
            print(f"torchdevice: C accelerator not built ({exc}); building a pure-Python wheel", file=sys.stderr)
            return
        name = os.path.basename(built)
        if version == "editable":
            # Editable installs import from src/: the module goes next to its source. Replaced
            # by rename, never rewritten in place: a running process that loaded the old file
            # keeps its mapping (writing into a loaded shared library crashes that process).
            final = os.path.join(self.root, "src", "torchdevice", name)
            staged = f"{final}.{os.getpid()}.tmp"
            shutil.copy2(built, staged)
            os.replace(staged, final)
        else:
            build_data["force_include"][built] = f"torchdevice/{name}"
        build_data["pure_python"] = False
        build_data["infer_tag"] = True

    def finalize(self, version, build_data, artifact_path):
        shutil.rmtree(getattr(self, "_workdir", ""), ignore_errors=True)
