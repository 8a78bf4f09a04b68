"""xDS: one builder per resource type (IR -> protobuf), snapshots, the ADS and LRS servers.

Builders (``cluster``, ``endpoint``, ``listener``, ``route``, ``build``) are pure and import
no I/O library; ``ads``/``lrs`` use grpc and are imported only by the runtime.
"""
