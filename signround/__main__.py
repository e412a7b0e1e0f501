"""``python -m signround ...`` (and ``torchrun --nproc_per_node N -m signround ...``): the command line."""

from .cli import main

raise SystemExit(main())
