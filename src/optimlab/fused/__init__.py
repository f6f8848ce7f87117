"""Fused fast path (placeholder until the fused kernel lands): always the reference path."""


def try_step(optimizer, group, params, h) -> bool:
    """Run one fused step for ``params`` of ``group``; False means: use the reference path."""
    if group.get("fused") is True:
        raise RuntimeError(
            f"{type(optimizer).__name__}: fused=True is not available in this build; "
            "use fused=None (automatic) or fused=False"
        )
    return False
