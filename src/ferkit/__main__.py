"""`python -m ferkit` runs the command-line interface (also what torchrun starts)."""
from ferkit.cli import main

raise SystemExit(main())
