"""UniFramework: open-world visual recognition.

Pretrain without labels, train on the known classes, flag what is unknown, discover new
classes among the unknowns and learn them without forgetting — one YAML config, one loop.
"""

__version__ = "0.1.0"
