"""Which files make up a model repository laid out like the Hugging Face Hub's.

One declaration for every part that reads such a layout: the sources copy these files into
the store, the registry hashes the ones that decide a model's output, the catalog downloads
them from the Hub, and the store keeps each precision's ONNX graph at the first of its paths.
"""

from __future__ import annotations

import fnmatch

# Each precision's ONNX graph, where it may be, in the order looked for. The first path is
# where the store keeps it.
ONNX_FILES = {
    "fp32": ("onnx/model.onnx", "model.onnx"),
    "int8": (
        "onnx/model_int8.onnx",
        "onnx/model_quantized.onnx",
        "model_int8.onnx",
        "model_quantized.onnx",
    ),
}
FP32_ONNX = ONNX_FILES["fp32"][0]
# Beside a graph too large for one file, its weights (the suffixes ONNX exporters use).
EXTERNAL_DATA_SUFFIXES = ("_data", ".data")
INT8_ONNX = ONNX_FILES["int8"][0]

# The files that decide a model's output besides its graph: the transformers and
# sentence-transformers configs and the tokenizer (vocab.txt or sentencepiece, as the model has).
CONFIG_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "sentencepiece.bpe.model",
)
# The files of sentence-transformers modules (Pooling, Dense, Normalize) in their numbered
# folders ("1_Pooling", "2_Dense", "3_Normalize", as modules.json names them): a Dense layer's
# weights decide the output as much as the configs do.
MODULE_PATTERNS = ("[0-9]_*/config.json", "[0-9]_*/model.safetensors")
# The model card: its front matter declares the license.
MODEL_CARD = "README.md"
# What a deployment copies besides the graph (and the weights, where there is no graph).
DEPLOYED_FILES = (*CONFIG_FILES, MODEL_CARD)
# Without these the engine cannot serve the model at all.
REQUIRED_FILES = ("config.json", "tokenizer.json")
# PyTorch weights: a deployment exports an ONNX graph from them when a source ships none, and
# runs the original model on them for the parity gate of an added model.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The small JSON files that describe a model, read to inspect a source before downloading it.
DESCRIPTION_FILES = (
    "config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "1_Pooling/config.json",
    "2_Dense/config.json",
    "tokenizer_config.json",
    MODEL_CARD,
)


def hub_files(onnx: str | None) -> tuple[str, ...]:
    """What a deployment takes from a Hub repository that ships its fp32 graph at ``onnx``
    (None: it ships none): that graph, the config files, the modules' files and the model
    card (patterns, as ``snapshot_download`` takes them)."""
    graph = (onnx, *(onnx + suffix for suffix in EXTERNAL_DATA_SUFFIXES)) if onnx else ()
    return (*graph, *DEPLOYED_FILES, *MODULE_PATTERNS)


def is_module_file(rel: str) -> bool:
    """Whether ``rel`` is a file of a sentence-transformers module folder."""
    return any(fnmatch.fnmatch(rel, pattern) for pattern in MODULE_PATTERNS)
