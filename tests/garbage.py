"""What only the cyclic garbage collector would free: objects left in reference cycles."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable


def cyclic_garbage(work: Callable[[], None]) -> Counter:
    """Objects by type (`module.qualname`) that `work()` left in reference cycles: with the
    collector off meanwhile, nothing else frees them, and a collection that saves what it finds
    shows them."""
    gc.collect()
    gc.disable()
    try:
        work()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        return Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
