"""Unpickling with an allow-list: the only way this project reads pickles it did not write.

A pickle names every callable it wants run (``GLOBAL``/``STACK_GLOBAL`` opcodes resolved by
``find_class``); building objects from anything else is what makes untrusted pickles execute
code. `AllowListUnpickler` resolves only the (module, name) pairs its caller allows and refuses
any other with the caller's own one-line error, so a torch checkpoint (torch_checkpoint) or a
data set batch (CIFAR's python batches, testbed.train.datasets) can be read from a stranger.

`NUMPY_ARRAYS` allows what numpy's own ``ndarray.__reduce__`` emits for an array: the
reconstruct function, ``ndarray`` and ``dtype``, under numpy 1's module name and numpy 2's, and
``_codecs.encode`` for latin-1 only, which is how Python 3 writes bytes at protocol 2 (Python 2's
pickles, such as CIFAR's, hold them as strings). An object-dtype array's items are unpickled by the
same unpickler, so they are held to the list too.
"""

from __future__ import annotations

import pickle
from typing import IO, Any, Callable, Mapping

import numpy as np

_RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's private _reconstruct, wherever this numpy keeps it



def _latin1(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}: only latin-1 is allowed")
    return text.encode("latin1")


NUMPY_ARRAYS: Mapping[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1,
    **{(module, "_reconstruct"): _RECONSTRUCT for module in ("numpy.core.multiarray", "numpy._core.multiarray")},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class AllowListUnpickler(pickle.Unpickler):
    """A pickle.Unpickler that resolves only `allowed` globals and raises `refuse(module, name)` for others."""

    def __init__(self, file: IO[bytes], allowed: Mapping[tuple[str, str], Any],
                 refuse: Callable[[str, str], Exception], **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self.allowed = allowed
        self.refuse = refuse

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.allowed:
            return self.allowed[(module, name)]
        raise self.refuse(module, name)
