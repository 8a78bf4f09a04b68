"""The activator: holds requests for a cold model (loadable, served nowhere) until a replica
is ready, then sends them back through Envoy. Run by ``aixds serve``; imports I/O."""
