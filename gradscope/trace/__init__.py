"""Capture on the training thread: autograd walk, hooks, on-device statistics."""
