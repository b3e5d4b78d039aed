"""Lacuna's networks, their one preprocessing module and the two-stage inference engine.

Nothing here imports ``node``: the node depends on models, never the reverse.
"""
