"""``python -m demo.followup``: what ``ai-node demo`` runs (see :mod:`demo.followup.run`)."""

from __future__ import annotations

from demo.followup.run import main

if __name__ == "__main__":
    raise SystemExit(main())
