"""A MONAI ``LayerFactory`` for token mixers, with SS2D registered as ``"ss2d"``.

MONAI has no network registry; its ``LayerFactory`` objects (``Act``, ``Norm``, ``Conv``...) are its
factory system. ``Mixer["ss2d", 2]`` returns the SS2D class, and the networks take ``mixer="ss2d"``.
Other token mixers can be added with ``Mixer.add_factory_callable(name, lambda spatial_dims: cls)``
(names are stored upper-cased, so ``mixer="Name"`` and ``mixer="name"`` are the same mixer).

A VSS block builds its mixer as ``cls(d_model=C, d_state=N, scan_backend=..., recompute=..., **extra)``,
where ``C`` is the block's channels and ``extra`` holds ``dropout`` when a network's ``dropout`` is above 0
and any other keyword given to the block for its mixer. ``d_state``, ``scan_backend`` and ``recompute`` are
passed only to a constructor that takes them (by name, or through ``**kwargs``), so the smallest mixer is
``__init__(self, d_model)``; it maps (B, H, W, C) channels-last input to output of the same shape.
"""

from __future__ import annotations

import inspect

from monai.networks.layers.factories import LayerFactory

__all__ = ["Mixer", "mixer_class", "OPTIONAL_MIXER_ARGS", "accepted_options"]

Mixer = LayerFactory(name="Token mixer layers", description="Factory for token-mixing layers of VSS blocks.")

# what a VSS block passes to every mixer but leaves out where the mixer's constructor does not take it
OPTIONAL_MIXER_ARGS = ("d_state", "scan_backend", "recompute")


@Mixer.factory_function("ss2d")
def _ss2d_factory(spatial_dims: int = 2):
    if spatial_dims != 2:
        raise ValueError(f"SS2D mixes tokens of 2D maps; spatial_dims={spatial_dims} is not supported")
    from vmunet_monai.layers.ss2d import SS2D

    return SS2D


def mixer_class(mixer: str, owner: str = "VSSBlock", spatial_dims: int = 2):
    """The token mixer registered in :data:`Mixer` as ``mixer`` (in any case), for ``spatial_dims``.

    Raises:
        ValueError: ``mixer`` is not a registered name; the message names ``owner`` (the class asking) and
            lists the registered names.
    """
    if not isinstance(mixer, str) or mixer.upper() not in Mixer.names:
        registered = ", ".join(repr(name.lower()) for name in Mixer.names)
        raise ValueError(f"{owner}: mixer {mixer!r} is not a registered token mixer (registered: {registered})")
    return Mixer[mixer, spatial_dims]


def accepted_options(cls, options: dict) -> dict:
    """``options`` less the :data:`OPTIONAL_MIXER_ARGS` that the constructor of ``cls`` does not take (all of
    them are kept for a constructor with ``**kwargs``, or one whose signature cannot be read)."""
    try:
        params = inspect.signature(cls).parameters.values()
    except (TypeError, ValueError):
        return dict(options)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(options)
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = {p.name for p in params if p.kind in named}
    return {k: v for k, v in options.items() if k in names or k not in OPTIONAL_MIXER_ARGS}
