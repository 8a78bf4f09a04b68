"""Runtime: task supervision, the fleet watcher, the reconcile loop and ordered shutdown.

This is where I/O meets decisions; only ``cli`` imports it.
"""
