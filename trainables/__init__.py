"""Everything that runs inside one trial: policies, gradient signals, data, models, the epoch loop.

Import the submodules directly (`trainables.loop`, `trainables.policies`, ...). This package file
imports nothing so that the pure-Python policies stay importable without torch.
"""
