"""One tiny fine-tune config per domain, on the real data slices the domain tests use: a one-block model of the
smallest recipe family, a few steps, one thread, float32 (``train.amp=off``), no progress bar."""
import importlib.util
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
R_INTRO = Path("/usr/share/doc/r-doc-pdf/manual/R-intro.pdf")
R_INTRO_SLICE = [10, 11, 12, 13, 14, 18]          # 4 train, 2 test pages (by content hash)

DOMAINS = ("vision", "code", "genomics", "documents")
# the Debian package each domain's data slice comes from (the debian_data marker); code reads the running
# interpreter's standard library
DEBIAN_DATA = {"genomics": "r-cran-mlbench", "documents": "r-doc-pdf"}


def _code_helpers():
    spec = importlib.util.spec_from_file_location("code_test_helpers", TESTS / "code" / "code_test_helpers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def small_source_tree(dest: Path) -> Path:
    """14 small CPython stdlib files (10 train, 2 val, 2 test), as the code tests use."""
    return _code_helpers().copy_small_tree(dest)


def manual_pages(dest: Path) -> Path:
    """A folder holding 6 pages of R-intro.pdf, as the documents tests use."""
    import pypdfium2 as pdfium

    dest.mkdir(parents=True, exist_ok=True)
    src, out = pdfium.PdfDocument(str(R_INTRO)), pdfium.PdfDocument.new()
    try:
        out.import_pages(src, R_INTRO_SLICE)
        out.save(str(dest / "R-intro.pdf"))
    finally:
        out.close()
        src.close()
    return dest


def tiny_cfg(domain: str, tmp: Path, out: Path, **train) -> dict:
    """A config of ``domain`` writing to ``out`` (``tmp`` holds the data it needs); ``train`` overrides."""
    t = {"steps": 3, "log_every": 1, "progress": False, "seed": 1, "num_threads": 1, "amp": "off",
         "eval_every": 1000, **train}
    if domain == "vision":           # ViT-iRPE, 8x8 digits as a 2x2 grid of 4x4 patches
        return {"task": "image_classification",
                "model": {"name": "vit_irpe_tiny", "kwargs": {"patch_size": 4, "depth": 1, "embed_dim": 32,
                                                              "num_heads": 2}},
                "data": {"name": "digits", "augment": False, "train_limit": 256, "eval_limit": 64},
                "optim": {"lr": 2e-3}, "train": {"batch_size": 32, **t}, "output": {"dir": str(out)}}
    if domain == "code":             # RoPE code LM, 32-token windows of a 300-token BPE
        src = tmp / "src"
        if not src.exists():
            small_source_tree(src)
        return {"task": "causal_lm", "model": {"name": "code_lm_rope_tiny",
                                               "kwargs": {"dim": 32, "depth": 1, "num_heads": 2}},
                "data": {"name": "source_tree", "root": str(src), "seq_len": 32, "vocab_size": 300,
                         "eval_limit": 64},
                "optim": {"lr": 3e-3, "warmup_steps": 0, "min_lr_ratio": 1.0},
                "train": {"batch_size": 8, "eval_batch_size": 64, **t}, "output": {"dir": str(out)}}
    if domain == "genomics":         # RoPE DNA encoder, splice junctions as codons
        return {"task": "sequence_classification",
                "model": {"name": "dna_rope_tiny", "kwargs": {"depth": 1, "dim": 32, "num_heads": 2}},
                "data": {"name": "splice_junctions", "tokenizer_kind": "codon", "train_limit": 128,
                         "eval_limit": 64},
                "train": {"batch_size": 16, "eval_batch_size": 64, **t}, "output": {"dir": str(out)}}
    if domain == "documents":        # LayoutLM word labelling on real R-manual pages
        pages = tmp / "manuals"
        if not pages.exists():
            manual_pages(pages)
        return {"task": "word_labelling",
                "model": {"name": "doc_layoutlm_tiny", "kwargs": {"dim": 32, "depth": 1, "num_heads": 2,
                                                                  "mlp_hidden": 64, "drop": 0.0, "attn_drop": 0.0}},
                "data": {"name": "r_manuals", "root": str(pages), "seq_len": 64, "min_freq": 1},
                "train": {"batch_size": 4, "eval_batch_size": 8, **t}, "output": {"dir": str(out)}}
    raise ValueError(f"no tiny config for domain {domain!r}; known: {', '.join(DOMAINS)}")
