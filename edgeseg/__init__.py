"""edgeseg: distil, export and serve compact semantic-segmentation networks.

The stages live in ``edgeseg.training``, ``edgeseg.export`` and ``edgeseg.runtime``; this top-level package only holds
the version, the shared assets (embedded CamVid sample, teacher checkpoint) and the CLI dispatcher.
"""

__version__ = "0.1.0"
