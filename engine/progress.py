"""Progress bars: tqdm where it is installed, a plain pass-through on a bare GPU machine."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


def progress(iterable: Iterable[T], **kwargs: Any) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar on stderr; silent when tqdm is missing or disabled."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # the training path must run on stock PyTorch alone
        yield from iterable
        return
    kwargs.setdefault("file", sys.stderr)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    yield from tqdm(iterable, **kwargs)
