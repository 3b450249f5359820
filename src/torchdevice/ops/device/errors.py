"""The clear error for CUDA APIs that have no equivalent on the target.

Every such error names the API, the target device and what to do instead, and
is a ``RuntimeError`` (what CUDA code already expects from a failing CUDA call),
so ``except RuntimeError`` handlers keep working.
"""


class TargetUnsupportedError(RuntimeError):
    """A CUDA API that torchdevice cannot provide on the target device."""


def unsupported(api: str, target: str, why: str, instead: str) -> TargetUnsupportedError:
    """Build the error: ``<api> is not supported on the <target> target (torchdevice): <why>. <instead>``."""
    return TargetUnsupportedError(
        f"{api} is not supported on the {target} target (torchdevice runs this CUDA program on {target}): "
        f"{why}. {instead}")


def raiser(api: str, target: str, why: str, instead: str, original=None):
    """A function with ``original``'s name and docs that raises the clear error when called."""
    import functools

    def unsupported_api(*args, **kwargs):
        raise unsupported(api, target, why, instead)
    if original is not None and callable(original):
        try:
            return functools.wraps(original)(unsupported_api)
        except (AttributeError, TypeError):
            pass
    return unsupported_api
