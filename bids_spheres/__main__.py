"""``python -m bids_spheres``: the BIDS-App command line."""

from bids_spheres.app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
