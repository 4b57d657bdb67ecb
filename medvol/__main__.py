"""``python -m medvol`` runs the command line."""

from medvol.cli import main

raise SystemExit(main())
