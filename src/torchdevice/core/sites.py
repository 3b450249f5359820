"""Which stack frames are the user's own code: the call sites of reports and warnings.

A frame is classified by the file its code object comes from, once per code
object (the answer is cached in ``CODE_CLASS``, keyed by ``id(code)``: hashing a
code object hashes its contents, about 200 ns; each entry holds its code object,
so that the id cannot be reused while cached):

* ``LIBRARY``: torch (with its sibling packages functorch and torchgen) and
  torchdevice itself;
* ``STDLIB``: the standard library, frozen modules (``<frozen runpy>``),
  other ``<...>`` pseudo-files except ``<string>``/``<stdin>``, and the
  environment's scripts folder (the entry-point shims pip writes, ``torchrun``);
* ``USER``: everything else: the program, its own modules, third-party
  packages in site-packages, code run with ``python -c``.

``user_site(frame)`` walks from ``frame`` towards the program's entry point and
returns the first user frame plus the library function the user called (the
"via", e.g. ``torch.nn.modules.module:Module.cuda`` for ``model.cuda()``).

Nothing here runs on a hot path unless a feature that needs call sites (the
migration report, a once-per-call-site warning) is on. Standard library only;
torch's location is read from ``sys.modules`` when first needed.
"""
import os
import sys
import sysconfig

USER = 0
LIBRARY = 1
STDLIB = 2

# id(code object) -> (code object, USER / LIBRARY / STDLIB). Grows with the number
# of distinct functions seen on call-site paths, which is bounded by the program's code.
CODE_CLASS = {}
_prefixes = None  # (library prefixes, stdlib prefixes, site-packages prefixes)
_prefixes_know_torch = False
_USER_PSEUDO_FILES = ("<string>", "<stdin>")


def _dir_of(module_name):
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    return os.path.dirname(os.path.abspath(path)) if path else None


def _with_sep(paths):
    out = []
    for path in paths:
        if path:
            for variant in {os.path.abspath(path), os.path.realpath(path)}:
                out.append(os.path.normcase(variant).rstrip(os.sep) + os.sep)
    return tuple(sorted(set(out), key=len, reverse=True))


def _compute_prefixes():
    library = [_dir_of("torchdevice")]
    torch_dir = _dir_of("torch")
    if torch_dir:
        parent = os.path.dirname(torch_dir)
        library += [torch_dir, os.path.join(parent, "functorch"), os.path.join(parent, "torchgen")]
    paths = sysconfig.get_paths()
    # The environment's scripts folder holds the entry-point shims pip writes (``torchrun``:
    # three lines that call torch's main): never the program's own call sites.
    stdlib = [paths.get("stdlib"), paths.get("platstdlib"), paths.get("scripts")]
    site_dirs = [paths.get("purelib"), paths.get("platlib")]
    try:
        import site

        site_dirs += list(site.getsitepackages()) + [site.getusersitepackages()]
    except (AttributeError, ImportError):  # virtualenv's old site.py, embedded interpreters
        pass
    site_dirs += [p for p in sys.path if p and os.path.basename(p.rstrip(os.sep)) in ("site-packages", "dist-packages")]
    return _with_sep(library), _with_sep(stdlib), _with_sep(site_dirs)


def classify_file(filename: str) -> int:
    """USER, LIBRARY or STDLIB for a code object's ``co_filename``."""
    global _prefixes, _prefixes_know_torch
    if filename.startswith("<"):
        return USER if filename in _USER_PSEUDO_FILES or filename.startswith("<ipython") else STDLIB
    if _prefixes is None or (not _prefixes_know_torch and "torch" in sys.modules):
        _prefixes_know_torch = "torch" in sys.modules
        _prefixes = _compute_prefixes()
        CODE_CLASS.clear()  # answers given before torch was located may be wrong
    library, stdlib, site_dirs = _prefixes
    path = os.path.normcase(os.path.abspath(filename))
    if path.startswith(library):
        return LIBRARY
    if path.startswith(stdlib) and not path.startswith(site_dirs):
        return STDLIB
    return USER


def classify(code, module_globals=None) -> int:
    """The class of a code object (cached).

    Code compiled from a string (``<string>``) is the program's own when it runs
    in ``__main__`` (``python -c``, ``exec`` in the script); code that a library
    generates that way runs in the library's module namespace (dataclasses build
    ``__init__`` so, e.g. for torch's launcher config) and takes that module's
    class, given its globals.
    """
    entry = CODE_CLASS.get(id(code))
    if entry is None:
        kind = classify_file(code.co_filename)  # may clear CODE_CLASS: insert after
        if kind == USER and code.co_filename in _USER_PSEUDO_FILES and module_globals is not None:
            owner_file = module_globals.get("__file__")
            if module_globals.get("__name__") != "__main__" and isinstance(owner_file, str):
                kind = classify_file(owner_file)
        CODE_CLASS[id(code)] = (code, kind)
        return kind
    return entry[1]


def function_name(frame) -> str:
    """``module:qualname`` of the function running in ``frame``."""
    code = frame.f_code
    name = getattr(code, "co_qualname", code.co_name)
    return f"{frame.f_globals.get('__name__', '?')}:{name}"


def user_site(frame):
    """(user frame, via) for the first user frame at or above ``frame``.

    ``via`` is ``None`` when ``frame`` itself is user code, else the
    ``module:qualname`` of the library function the user frame called. Returns
    ``(None, None)`` when no frame on the stack is user code.
    """
    user, below = user_frame(frame)
    return user, (None if below is None else function_name(below))


def user_frame(frame):
    """(user frame, library frame it called or None): ``user_site`` without naming the function.

    A user-classified frame that only passes a call through to the library
    function it wraps (``passes_through``: a deprecation wrapper such as
    ``typing_extensions.deprecated``'s around ``torch.cuda.amp.GradScaler``)
    is not the program's call site: the walk goes on to its caller.
    """
    below = None
    while frame is not None:
        code = frame.f_code
        entry = CODE_CLASS.get(id(code))
        kind = classify(code, frame.f_globals) if entry is None else entry[1]
        if kind == USER:
            if below is None or not passes_through(frame, below):
                return frame, below
        elif kind == LIBRARY:
            below = frame
        frame = frame.f_back
    return None, None


def passes_through(frame, callee) -> bool:
    """Whether ``frame`` is a decorator's wrapper around the function running in ``callee``.

    A wrapper keeps the function it wraps in a closure cell or an argument
    (``functools.wraps`` closures, PEP 702 ``@deprecated`` from ``warnings`` and
    ``typing_extensions``, wrapt-style ``wrapper(wrapped, instance, args,
    kwargs)``); for a class, its ``__init__``/``__new__``. ``frame`` passes the
    call through when such a held object's code is the code ``callee`` runs.
    Only frames of code that can hold one are looked at (a closure, or a
    function with arguments); this runs on the first call from a site only.
    """
    code = frame.f_code
    names = code.co_freevars + code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    if not names:
        return False
    target = callee.f_code
    local = frame.f_locals
    for name in names:
        held = local.get(name)
        if held is None or isinstance(held, (str, int, float, bool, bytes, tuple, list, dict)):
            continue
        if _code_of(held) is target:
            return True
        if isinstance(held, type):
            for attr in ("__init__", "__new__"):
                if _code_of(held.__dict__.get(attr)) is target:
                    return True
    return False


def _code_of(obj):
    """The code object a function, method, static/classmethod or wrapper of one runs, else None."""
    try:
        for _ in range(4):
            if obj is None:
                return None
            code = getattr(obj, "__code__", None)
            if code is not None:
                return code
            obj = getattr(obj, "__func__", None) or getattr(obj, "__wrapped__", None)
    except Exception:  # an object whose attribute lookup fails or does work: not a wrapped function
        return None
    return None


def display_path(filename: str, cwd=None) -> str:
    """``filename`` relative to the working directory when it lies below it."""
    if filename.startswith("<"):
        return filename
    cwd = os.getcwd() if cwd is None else cwd
    try:
        relative = os.path.relpath(filename, cwd)
    except ValueError:  # another drive on Windows
        return filename
    return filename if relative.startswith(os.pardir) else relative
