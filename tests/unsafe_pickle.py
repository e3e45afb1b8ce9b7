"""An object whose unpickling has a side effect (touches a file): a checkpoint holding it must be refused unbuilt."""

from __future__ import annotations

from pathlib import Path


class SideEffect:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))
