"""torch modules for the layer families torch.nn lacks (``Leaf.custom_module``).

Imported only by ``torch_bridge`` when such a layer is built. Each class is
self-contained (it uses only ``torch`` and ``nn``): ``convcalc export --to pytorch``
copies its source into the exported file, which imports nothing but torch.
Constructor arguments are the spec's fields, as for torch.nn classes.
"""

from __future__ import annotations

import torch
from torch import nn

__all__: list[str] = []

# Keep the names used by copied class sources defined here.
_ = (torch, nn)
