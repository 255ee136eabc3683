"""The adapter registry. Importing it (as ``api`` and ``generator`` do first) sets
the OpenMP spin below, before anything loads torch."""

import os as _os

# torch runs its parallel regions on GNU OpenMP, whose threads busy-wait 300,000 spins
# after each region by default, holding a core meanwhile. A process that
# then hashes on a helper thread, answers HTTP or runs another batch's team competes
# with them: through the REST service a lone request whose batch ran on both threads
# took 25.1-25.5 ms at p50 with the default and 17.3-20.2 ms (once 24.1) at 20,000
# spins, alternating; 200 clients were unchanged (docs/experiments.md). Only where the
# operator has not set it, and only before torch loads.
SPIN = "20000"
_os.environ.setdefault("GOMP_SPINCOUNT", SPIN)
