"""Genomics domain: DNA encoders and LMs with codon-segment (BiPE) positions; sequence classification, masked and
causal DNA language modelling.

The plugin declaration below is all the core knows of this package (`zoo.plugins`)."""

PLUGIN = {
    "name": "genomics",
    "models": [".models"],
    "tasks": {"sequence_classification": ".task", "masked_lm": ".task", "dna_lm": ".task"},
    "benches": [".bench"],
}
