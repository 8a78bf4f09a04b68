"""aixds: an Envoy xDS control plane for AI inference fleets.

Subpackages: ``fleet`` (observed state, Redis registry), ``decide`` (pure decisions),
``xds`` (builders, snapshots, ADS), ``api``, ``agent``, ``sim``, ``runtime``.
"""

__version__ = "0.1.0"
