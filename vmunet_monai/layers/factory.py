"""A MONAI ``LayerFactory`` for token mixers, with SS2D registered as ``"ss2d"``.

MONAI has no network registry; its ``LayerFactory`` objects (``Act``, ``Norm``, ``Conv``...) are its
factory system. ``Mixer["ss2d", 2]`` returns the SS2D class, and the networks take ``mixer="ss2d"``.
Other token mixers can be added with ``Mixer.add_factory_callable(name, lambda spatial_dims: cls)``.
"""

from __future__ import annotations

from monai.networks.layers.factories import LayerFactory

__all__ = ["Mixer"]

Mixer = LayerFactory(name="Token mixer layers", description="Factory for token-mixing layers of VSS blocks.")


@Mixer.factory_function("ss2d")
def _ss2d_factory(spatial_dims: int = 2):
    if spatial_dims != 2:
        raise ValueError(f"SS2D mixes tokens of 2D maps; spatial_dims={spatial_dims} is not supported")
    from vmunet_monai.layers.ss2d import SS2D

    return SS2D
