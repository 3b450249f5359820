"""Run the torch version matrix one tox env at a time and tabulate the results.

    python3 tools/matrix.py                      # every env of the tox label "matrix"
    python3 tools/matrix.py -e torch22,torch213  # some envs
    python3 tools/matrix.py --update-docs        # also rewrite the table in docs/compatibility.md
    python3 tools/matrix.py -- -k device         # arguments after -- go to pytest
    python3 tools/matrix.py -j 2                 # two envs at a time (one installs while one tests)

Each env is built fresh (``tox -r --notest``: install time), tested (``tox -e``:
test time, JUnit XML), asked which torch it got, and then deleted unless
``--keep`` is given: a CUDA build of torch with its nvidia packages takes about
5 GB, so the whole matrix never needs more than one env on disk. pip's cache is
the user's usual one (set PIP_CACHE_DIR to move it); tox passes PIP_* through.
The torchdevice wheel is built once and given to every env (``--installpkg``),
so that envs running side by side (``-j``) never share a package build.

Results go to .tox/matrix/results.json (one entry per env, updated as each
finishes) and are printed as the Markdown table docs/compatibility.md holds.
Exit status: 0 when every env installed and passed, 1 otherwise.

Needs tox >= 4 (``python3 -m pip install tox``); only the standard library here.
"""
import argparse
import concurrent.futures
import datetime
import json
import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LABEL = "matrix"
DOC = ROOT / "docs" / "compatibility.md"
BEGIN, END = "<!-- matrix:begin -->", "<!-- matrix:end -->"
# A CUDA build of torch with its nvidia packages needs about this much while installing.
MIN_FREE_GB = 12

PROBE = (
    "import json, torch; print(json.dumps({'torch': torch.__version__, "
    "'cuda_built': torch.backends.cuda.is_built(), 'cuda_version': torch.version.cuda}))"
)


def tox_command():
    """How to run tox: the module next to this interpreter, else tox on PATH."""
    try:
        import tox  # noqa: F401
        return [sys.executable, "-m", "tox"]
    except ImportError:
        found = shutil.which("tox")
        if found is None:
            sys.exit("tools/matrix.py needs tox >= 4: python3 -m pip install tox")
        return [found]


def tox_config(tox, selector, key):
    """{env name: value of ``key``} from ``tox config``."""
    out = subprocess.run(tox + ["config", *selector, "-k", key], cwd=ROOT, capture_output=True, text=True, check=True)
    found, env = {}, None
    for line in out.stdout.splitlines():
        head = re.match(r"\[testenv:(.+)\]$", line.strip())
        if head:
            env = head.group(1)
        elif env and line.startswith(f"{key} ="):
            found[env] = line.partition("=")[2].strip()
    return found


def free_gb(path):
    return shutil.disk_usage(path).free / 2**30


def junit_counts(path):
    """passed/failed/errors/skipped counts and the distinct skip reasons of a JUnit XML file."""
    root = ET.parse(path).getroot()
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    skips = {}
    for case in root.iter("testcase"):
        if case.find("failure") is not None:
            counts["failed"] += 1
        elif case.find("error") is not None:
            counts["errors"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
            reason = case.find("skipped").get("message", "")
            skips[reason] = skips.get(reason, 0) + 1
        else:
            counts["passed"] += 1
    return counts, skips


def build_wheel(out_dir):
    """The torchdevice wheel every env installs (built once per matrix run)."""
    dist = out_dir / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dist), str(ROOT)],
                   check=True)
    return next(dist.glob("torchdevice_autoload-*.whl"))


def run_env(tox, env, env_dir, out_dir, pytest_args, log, wheel):
    """Install, test, probe and describe one env."""
    result = {"env": env}
    junit = out_dir / f"{env}.xml"
    junit.unlink(missing_ok=True)
    tox = tox + ["--installpkg", str(wheel)]
    start = time.monotonic()
    install = subprocess.run(tox + ["-r", "-e", env, "--notest"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    result["install_s"] = round(time.monotonic() - start)
    if install.returncode != 0:
        result["status"] = "install failed"
        return result
    python = Path(env_dir) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    probe = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True,
                           env={**os.environ, "TORCHDEVICE_DISABLE": "1"})
    if probe.returncode == 0:
        result.update(json.loads(probe.stdout))
    start = time.monotonic()
    test = subprocess.run(tox + ["-e", env, "--", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *pytest_args],
                          cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    result["test_s"] = round(time.monotonic() - start)
    if junit.is_file():
        counts, skips = junit_counts(junit)
        result.update(counts)
        result["skip_reasons"] = skips
    result["status"] = "ok" if test.returncode == 0 else f"failed (exit {test.returncode})"
    return result


def table(results, date):
    lines = [
        f"Last run: {date}.",
        "",
        "| env | torch | build | passed | failed | errors | skipped | install (s) | tests (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        build = "CUDA " + str(r["cuda_version"]) + " (no GPU)" if r.get("cuda_built") else "CPU-only"
        if "torch" not in r:
            build = "?"
        lines.append("| {env} | {torch} | {build} | {passed} | {failed} | {errors} | {skipped} | {install} | {test} |".format(
            env=r["env"], torch=r.get("torch", r.get("status", "?")), build=build,
            passed=r.get("passed", "-"), failed=r.get("failed", "-"), errors=r.get("errors", "-"),
            skipped=r.get("skipped", "-"), install=r.get("install_s", "-"), test=r.get("test_s", "-")))
    reasons = {}
    for r in results:
        for reason, n in r.get("skip_reasons", {}).items():
            reasons.setdefault(reason, []).append(f"{r['env']} ({n})")
    if reasons:
        lines += ["", "Skips:", ""]
        lines += [f"- {reason}: {', '.join(envs)}" for reason, envs in sorted(reasons.items())]
    return "\n".join(lines)


def update_docs(text):
    doc = DOC.read_text()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{DOC} lacks the {BEGIN} ... {END} markers")
    head, _, rest = doc.partition(BEGIN)
    _, _, tail = rest.partition(END)
    DOC.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-e", "--envs", help="comma list of tox envs (default: the tox label 'matrix')")
    parser.add_argument("--keep", action="store_true", help="keep each env after its run (needs ~5 GB per CUDA env)")
    parser.add_argument("--update-docs", action="store_true", help=f"rewrite the table in {DOC.relative_to(ROOT)}")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="envs run side by side (default 1)")
    parser.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error(f"--jobs takes a whole number >= 1, not {args.jobs}")

    tox = tox_command()
    selector = ["-e", args.envs] if args.envs else ["-m", LABEL]
    env_dirs = tox_config(tox, selector, "env_dir")
    if not env_dirs:
        sys.exit(f"no tox envs for {' '.join(selector)}")
    work = Path(next(iter(env_dirs.values()))).parent
    out_dir = work / "matrix"
    out_dir.mkdir(parents=True, exist_ok=True)
    results_path = out_dir / "results.json"
    date = datetime.date.today().isoformat()
    wheel = build_wheel(out_dir)
    order = list(env_dirs)
    results = {}
    started = time.monotonic()

    def one(env):
        env_dir = env_dirs[env]
        if free_gb(work) < MIN_FREE_GB * (1 + (args.jobs > 1)):
            print(f"{env}: skipped, only {free_gb(work):.0f} GB free (needs {MIN_FREE_GB} per env)", flush=True)
            return {"env": env, "status": "not run: disk full"}
        print(f"{env}: installing and testing ...", flush=True)
        with open(out_dir / f"{env}.log", "w") as log:  # one log per env: envs may run side by side
            result = run_env(tox, env, env_dir, out_dir, args.pytest_args, log, wheel)
        if not args.keep:
            shutil.rmtree(env_dir, ignore_errors=True)
        print("{env}: {status}: torch {torch}, {passed} passed, {failed} failed, {errors} errors, {skipped} skipped "
              "(install {install_s}s, tests {test_s}s)".format(**{
                  "torch": "?", "passed": "-", "failed": "-", "errors": "-", "skipped": "-", "test_s": "-",
                  **result}), flush=True)
        return result

    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for env, result in zip(order, pool.map(one, order)):
            results[env] = result
            results_path.write_text(json.dumps({"date": date, "results": list(results.values())}, indent=1))
    results = [results[env] for env in order]
    minutes = (time.monotonic() - started) / 60
    text = table(results, date) + f"\n\nWhole run: {minutes:.0f} min ({len(results)} envs, {args.jobs} at a time)."
    print()
    print(text)
    print(f"\nlogs: {out_dir}/<env>.log\nresults: {results_path}")
    if args.update_docs:
        update_docs(text)
        print(f"updated {DOC}")
    return 0 if all(r.get("status") == "ok" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
