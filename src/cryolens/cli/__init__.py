"""The ``cryolens`` command line.

Torch's CPU threads (OpenMP) spin while they wait for work by default; on cores shared with other
programs the spinning threads take the time the working ones need (measured on 2 shared cores at load
5: class3d skip-align with 2 threads took 142 s wall and 94 CPU-s spinning, 29 s and 19 CPU-s with
passive waits). So the commands wait passively unless ``OMP_WAIT_POLICY`` is set; it must be set before
torch is first imported, which this package does not do.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
