"""The ``cxrjepa`` command line: a thin face over the stage packages.

Before anything imports torch, idle OpenMP threads are told to sleep rather than spin
(``OMP_WAIT_POLICY=PASSIVE``, unless the user set it): on a laptop or a shared node the CPU is shared with
data-loader workers and other jobs, and spinning threads there burned twice the CPU for half the speed
(two 2-thread ViT training loops on 2 cores: 13.6 s each with spinning, 6.7 s passive; alone: on par).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
