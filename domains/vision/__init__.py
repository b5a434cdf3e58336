"""Vision domain: ViTs with relative / rotary / conditional encodings, LightNet, RMT, DETR; image classification.

The plugin declaration below is all the core knows of this package (`zoo.plugins`)."""

PLUGIN = {
    "name": "vision",
    "models": [".models", ".cpvt", ".rmt", ".rope_vit", ".lightnet", ".detr"],
    "tasks": {"image_classification": ".task"},
    "benches": [".bench"],
    "timm": True,          # `timm.create_model("vit_irpe_small")` works after `import zoo`
}
