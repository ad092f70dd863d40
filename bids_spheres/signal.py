"""``bids_spheres.signal``: the public name of :mod:`bids_spheres.masker.signal`.

Kept so that ``from bids_spheres.signal import clean`` keeps working; the code
lives in the masker library.
"""

from bids_spheres.masker.signal import *  # noqa: F403
from bids_spheres.masker.signal import __all__  # noqa: F401
