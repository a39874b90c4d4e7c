"""The demo model's tooling: synthetic series (``demo.synthetic``) and training (``demo.training``).

Not runtime code: the node never imports it.
"""
