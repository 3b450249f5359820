"""The ``torchdevice`` command line (``python -m torchdevice`` or the ``torchdevice`` script).

Subcommands:

* ``info [--json]``: torch build, hardware, target device and why, autoload
  state, configuration with sources, patches applied and skipped per area.
* ``run [--report PATH|-] script.py [args...]`` / ``run [...] -m module [args...]``:
  run a program with torchdevice active, even when autoload is disabled or not
  installed, exactly as ``python script.py`` would run it.
* ``coverage [--json|--markdown]``: what torchdevice does for each public
  ``torch.cuda`` name.

Exit codes: 0 success; 1 ``coverage`` table unavailable; 2 usage error, bad
configuration value, or a script that cannot be opened; ``run`` otherwise
exits with the program's own code (1 for an uncaught exception, as Python
does). docs/cli.md is the reference; its option tables are generated from the
parser below (tests/test_docs.py checks they are current).

Importing this module imports neither torch nor the patch areas; each
subcommand loads what it needs.
"""
import argparse
import sys

PROG = "torchdevice"
EXIT_OK = 0
EXIT_UNAVAILABLE = 1
EXIT_USAGE = 2

_DESCRIPTION = "Run CUDA-written PyTorch code on MPS or the CPU, and see what torchdevice did."
_EPILOG = ("exit codes: 0 success; 1 coverage table unavailable; 2 usage error, bad configuration "
           "value or unreadable script; `run` exits with the program's own code.")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (also the source of docs/cli.md's option tables)."""
    parser = argparse.ArgumentParser(prog=PROG, description=_DESCRIPTION, epilog=_EPILOG)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    info = commands.add_parser(
        "info", help="show torch build, hardware, target device, configuration and patches",
        description="Show the torch build, detected hardware, the target device and why, whether the autoload "
                    ".pth is installed and active, every TORCHDEVICE_* variable with its value and source, and "
                    "the patches applied and skipped per area.")
    info.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    run = commands.add_parser(
        "run", help="run a Python program with torchdevice active",
        usage=f"{PROG} run [-h] [--report PATH|-] (script.py | -m module) [args ...]",
        description="Run a program as `python script.py args` or `python -m module args` would, with torchdevice "
                    "active even when TORCHDEVICE_DISABLE is set or the autoload .pth is not installed. sys.argv, "
                    "__main__, tracebacks and the exit code are the program's own. Child processes inherit the "
                    "setting.")
    run.add_argument("--report", metavar="PATH|-",
                     help="write the migration report at exit: '-' for a table on stderr, or a .json path "
                          "(sets TORCHDEVICE_REPORT for the program and its children)")
    run.add_argument("-m", dest="module", metavar="module", help="run a library module as a script, like python -m")
    run.add_argument("script", nargs="?", help="path of the script to run")
    run.add_argument("args", nargs="*", help="arguments passed to the program unchanged")

    coverage = commands.add_parser(
        "coverage", help="show what torchdevice does for each public torch.cuda name",
        description="List every public name of torch.cuda with how torchdevice handles it while redirecting "
                    "(redirected, emulated, no-op, unsupported) and a note.")
    form = coverage.add_mutually_exclusive_group()
    form.add_argument("--json", action="store_true", help="print the rows as a JSON list")
    form.add_argument("--markdown", action="store_true", help="print the Markdown table of docs/cuda-coverage.md")
    return parser


def _version():
    from . import __version__

    return __version__


def _split_run_args(argv, parser):
    """Split ``run``'s own options from the program and its arguments.

    Like the python command line: options are read up to the script path or
    ``-m module``; everything after belongs to the program, even ``--help``.
    """
    run_parser = parser._subparsers._group_actions[0].choices["run"]
    report = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("-h", "--help"):
            run_parser.print_help()
            raise SystemExit(EXIT_OK)
        if arg == "--report" or arg.startswith("--report="):
            if "=" in arg:
                report = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                i += 1
                report = argv[i]
            else:
                run_parser.error("argument --report: expected one argument")
        elif arg == "-m" or (arg.startswith("-m") and len(arg) > 2):
            module = arg[2:] if len(arg) > 2 else (argv[i + 1] if i + 1 < len(argv) else None)
            if not module:
                run_parser.error("argument -m: expected one argument")
            rest = argv[i + 1:] if len(arg) > 2 else argv[i + 2:]
            return report, None, module, rest
        elif arg == "--":
            if i + 1 >= len(argv):
                run_parser.error("a script or -m module is required")
            return report, argv[i + 1], None, argv[i + 2:]
        elif arg.startswith("-") and arg != "-":
            run_parser.error(f"unrecognized option {arg!r} (options go before the script)")
        else:
            return report, arg, None, argv[i + 1:]
        i += 1
    run_parser.error("a script or -m module is required")


def main(argv=None) -> int:
    """Entry point; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "run":
        report, script, module, rest = _split_run_args(argv[1:], parser)
        from . import _cli_run

        return _cli_run.run(script=script, module=module, args=rest, report=report)
    options = parser.parse_args(argv)
    if options.command == "info":
        from . import _cli_info

        return _cli_info.main(as_json=options.json)
    if options.command == "coverage":
        return _coverage(options)
    parser.error(f"unknown command {options.command!r}")  # unreachable: argparse checks choices
    return EXIT_USAGE


def _coverage(options) -> int:
    from . import _cli_cache

    form = "markdown" if options.markdown else "json" if options.json else "text"
    name = _cli_cache.key(f"coverage-{form}")  # None when torch is imported or its build needs the hardware
    text = _cli_cache.load(name, str)  # a stored answer that is not exactly a text is computed again
    if text is None:
        text = _coverage_text(form)
        if text is None:
            print(f"{PROG} coverage: the torch.cuda coverage table is not part of this build of torchdevice",
                  file=sys.stderr)
            return EXIT_UNAVAILABLE
        _cli_cache.store(name, text)
    sys.stdout.write(text)
    return EXIT_OK


def _coverage_text(form):
    """The output of ``coverage`` in ``form`` (text, json, markdown); None without the coverage module."""
    import importlib

    # Import torch first: if autoload is armed, torchdevice activates now and
    # the table shows the records this process really applied.
    import torch  # noqa: F401

    try:
        coverage = importlib.import_module("torchdevice.coverage")
    except ModuleNotFoundError as exc:
        if exc.name not in ("torchdevice.coverage",):
            raise
        return None
    if form == "markdown":
        return coverage.render_markdown()
    rows = list(coverage.coverage_rows())
    if form == "json":
        import json

        return json.dumps(rows, indent=2) + "\n"
    counts = {}
    for row in rows:
        counts[row["kind"]] = counts.get(row["kind"], 0) + 1
    return render_rows(rows) + f"\n{len(rows)} names: " + ", ".join(
        f"{n} {kind}" for kind, n in sorted(counts.items())) + "\n"


def render_rows(rows) -> str:
    """A plain-text table of coverage rows ({name, kind, note})."""
    header = ("name", "kind", "note")
    cells = [header] + [(str(r["name"]), str(r["kind"]), str(r.get("note") or "")) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(2)]
    return "".join(f"{c[0].ljust(widths[0])}  {c[1].ljust(widths[1])}  {c[2]}".rstrip() + "\n" for c in cells)


if __name__ == "__main__":
    sys.exit(main())
