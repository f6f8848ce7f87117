"""Placeholder."""

def param_groups(model, weight_decay=None, **kw):
    return [p for p in model.parameters() if p.requires_grad]
