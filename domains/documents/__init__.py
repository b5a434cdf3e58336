"""Documents domain: layout-aware encoders over words and boxes (BROS, LayoutLMv3, reading order); word labelling
and entity linking.

The plugin declaration below is all the core knows of this package (`zoo.plugins`)."""

PLUGIN = {
    "name": "documents",
    "models": [".models"],
    "tasks": {"word_labelling": ".task", "entity_linking": ".task"},
    "benches": [],
}
