"""Running Envoy: render the bootstrap template (``envoy/edge.yaml``) and run Envoy.

``bootstrap`` is pure; ``runner`` starts the process and is imported only by the CLI.
"""
