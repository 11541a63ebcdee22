"""timm-registered image backbones: one module per family."""
