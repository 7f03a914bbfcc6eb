"""The garbage collector of a long-running fdpush process, set once its startup is done.

Nearly everything a request or a delivery batch allocates is freed by reference counting the
moment it is no longer used; the cyclic collector finds almost nothing (a few dozen objects in a
delivery benchmark of 40,000 notifications). With CPython's default thresholds it still runs a
young-generation pass every 700 new container objects, and each pass walks what is alive at that
moment: the rows of the claims and requests in flight. Measured under fan-out, that was 9 % of
the service's CPU. So:

- what exists after startup (modules, the app, its routes and models, the pools) is frozen out of
  the collector's passes (:func:`gc.freeze`): it lives as long as the process, and full passes
  would otherwise walk all of it;
- a young-generation pass runs every :data:`YOUNG_THRESHOLD` new container objects: in-flight
  data is freed long before, so the passes become rare and walk little (0.2 % of the CPU in the
  same benchmark), and a cycle of garbage still gets collected within a fraction of a second.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "settle"]

YOUNG_THRESHOLD = 50_000
# Older generations: collected every 20 young passes, the oldest every 100 of those (and, as
# CPython does, only when it has grown by a quarter since its last pass).
_OLDER_THRESHOLDS = (20, 100)


def settle() -> None:
    """Call once startup is done, in a process that serves until it stops."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *_OLDER_THRESHOLDS)
