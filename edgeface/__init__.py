"""edgeface: take a PyTorch face-recognition model to a phone or a Raspberry Pi.

This module stays import-light on purpose: `import edgeface.runtime` must work on a device without torch.
"""

__version__ = "0.1.0"
