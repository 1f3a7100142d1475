"""`python -m scratchdet` (also what `torchrun -m scratchdet` runs)."""

from scratchdet.cli import main

raise SystemExit(main())
