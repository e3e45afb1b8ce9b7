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
