"""Errors raised on bad multi-rater input."""


class MultiRaterDataError(ValueError):
    """Bad multi-rater input; the message names the file and the fix."""


def find_data_error(exc: BaseException | None) -> MultiRaterDataError | None:
    """The ``MultiRaterDataError`` behind ``exc``, if any.

    MONAI's ``Compose``/``apply_transform`` re-raise a transform's error as
    ``RuntimeError("applying transform ...")`` with the original as ``__cause__``; CLIs and
    engines use this to show the one clear message instead of the wrapper.
    """
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MultiRaterDataError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def project_error(exc: BaseException | None) -> BaseException | None:
    """The innermost exception in ``exc``'s chain that this package raised with its own message, if any.

    MONAI's bundle runner wraps every error of a config expression in ``RuntimeError("Failed to evaluate
    ConfigExpression ...")``; the message that names the file and the fix is in the chain, raised in a
    ``multirater_monai`` module. A raw error of torch or MONAI (raised outside this package) is not one.
    """
    import os

    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    found = None
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if isinstance(exc, MultiRaterDataError) or (
            tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(package + os.sep)
        ):
            found = exc
        exc = exc.__cause__ or exc.__context__
    return found


def install_error_summary() -> None:
    """After an uncaught error's traceback, print the project's own message again as the last line.

    ``python -m monai.bundle run ...`` shows a 50-400 line traceback that ends in MONAI's wrapper; the
    line that says what is wrong and how to fix it would be buried in the middle. The hook chains to the
    previous ``sys.excepthook`` (the traceback is printed as before) and adds one ``ERROR:`` line.
    """
    import sys

    previous = sys.excepthook
    if getattr(previous, "_multirater_summary", False):
        return

    def hook(exc_type, exc, tb):
        sys.stdout.flush()  # buffered log lines first, so that the message stays last
        previous(exc_type, exc, tb)
        clear = project_error(exc)
        if clear is not None:
            print(f"\nERROR: {clear}", file=sys.stderr, flush=True)

    hook._multirater_summary = True
    sys.excepthook = hook
