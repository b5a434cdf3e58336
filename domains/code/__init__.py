"""Code domain: causal code LMs with hierarchical (HiRoPE) and segment (BiPE) positions over source trees.

The plugin declaration below is all the core knows of this package (`zoo.plugins`)."""

PLUGIN = {
    "name": "code",
    "models": [".models"],
    "tasks": {"causal_lm": ".task"},
    "benches": [".bench"],
}
