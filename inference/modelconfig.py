"""What an embedding model needs besides its weights: dimensions, length limit, pooling, prefixes.

``read_model_config`` reads it from a Hugging Face / sentence-transformers repository layout;
``ModelConfig.from_manifest`` / ``to_manifest`` move it in and out of the model store's
``manifest.json`` (keys ``dimensions``, ``max_tokens``, ``pooling``, ``normalize``, ``prefixes``,
``matryoshka_dimensions`` and, for a model with sentence-transformers Dense layers after its
pooling, ``dense``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

POOLINGS = ("mean", "cls")
# What a model does: embed texts, or score (query, document) pairs (a cross-encoder).
MODEL_KINDS = ("embedding", "reranker")

# The sentence-transformers modules the engine reproduces; any other module (LayerNorm,
# WeightedLayerPooling, ...) would change the vectors, so a model that has one is refused rather
# than served wrongly.
_SUPPORTED_MODULES = {"Transformer", "Pooling", "Dense", "Normalize"}

# A Dense module's activation, by the name of the torch class its config names, as the engine
# applies it (numpy, after pooling).
DENSE_ACTIVATIONS = ("identity", "tanh", "relu", "sigmoid", "gelu")
_TORCH_ACTIVATIONS = {
    "Identity": "identity",
    "Tanh": "tanh",
    "ReLU": "relu",
    "Sigmoid": "sigmoid",
    "GELU": "gelu",
}
# Where a Dense module keeps its weights, in its own folder (safetensors: the engine reads it
# without PyTorch).
DENSE_WEIGHTS = "model.safetensors"

# Legacy sentence-transformers pooling flags and the mode each one turns on.
_LEGACY_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}

# Tokenizers without a real limit store a huge sentinel (1e30) as model_max_length.
_NO_LIMIT = 1_000_000


class ModelConfigError(ValueError):
    """A model repository or manifest describes something the engine cannot serve as-is."""


@dataclass(frozen=True)
class DenseLayer:
    """A sentence-transformers Dense module: ``activation(W @ pooled + b)``; its weights are
    ``path``/model.safetensors (keys ``linear.weight``, ``linear.bias``) under the model's
    folder."""

    path: str
    in_features: int
    out_features: int
    activation: str = "identity"
    bias: bool = True

    def __post_init__(self) -> None:
        if self.activation not in DENSE_ACTIVATIONS:
            raise ModelConfigError(
                f"the Dense layer in {self.path} uses activation {self.activation!r}; the engine "
                f"applies {', '.join(DENSE_ACTIVATIONS)}"
            )
        if self.in_features < 1 or self.out_features < 1:
            raise ModelConfigError(f"the Dense layer in {self.path} has no features")

    @property
    def weights(self) -> str:
        return f"{self.path}/{DENSE_WEIGHTS}"

    def to_manifest(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "in_features": self.in_features,
            "out_features": self.out_features,
            "activation": self.activation,
            "bias": self.bias,
        }


@dataclass(frozen=True)
class ModelConfig:
    kind: ClassVar[str] = "embedding"
    dimensions: int
    max_tokens: int  # special tokens included
    pooling: str  # "mean" | "cls"
    normalize: bool
    query_prefix: str = ""
    passage_prefix: str = ""
    # The shorter lengths the model was trained to be cut to (Matryoshka representation
    # learning), ascending; empty for a model whose vectors lose their meaning when cut.
    matryoshka_dimensions: tuple[int, ...] = ()
    # Dense layers applied after pooling (and before normalising), in order; ``dimensions`` is
    # the last one's output.
    dense: tuple[DenseLayer, ...] = ()

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ModelConfigError(
                f"pooling {self.pooling!r} is not supported; use one of {', '.join(POOLINGS)}"
            )
        if self.dimensions < 1:
            raise ModelConfigError(f"dimensions must be a positive integer, got {self.dimensions}")
        if self.max_tokens < 2:
            # Room for at least the two special tokens that frame every input.
            raise ModelConfigError(f"max_tokens must be at least 2, got {self.max_tokens}")
        cuts = self.matryoshka_dimensions
        if any(not 1 <= d <= self.dimensions for d in cuts) or list(cuts) != sorted(set(cuts)):
            raise ModelConfigError(
                f"matryoshka_dimensions must be distinct ascending integers from 1 to "
                f"{self.dimensions}, got {list(cuts)}"
            )
        widths = [layer.in_features for layer in self.dense]
        if self.dense and (
            [layer.out_features for layer in self.dense[:-1]] != widths[1:]
            or self.dense[-1].out_features != self.dimensions
        ):
            chain = ", ".join(f"{d.in_features}->{d.out_features}" for d in self.dense)
            raise ModelConfigError(
                f"the Dense layers ({chain}) do not chain to {self.dimensions} dimensions"
            )

    @property
    def hidden_dimensions(self) -> int:
        """The width of the transformer's per-token output, which pooling keeps."""
        return self.dense[0].in_features if self.dense else self.dimensions

    def output_dimensions(self) -> tuple[int, ...]:
        """The lengths a caller may ask for: the Matryoshka ones and the full dimension."""
        return tuple(sorted({*self.matryoshka_dimensions, self.dimensions}))

    def prefix(self, input_type: str | None) -> str:
        """The text prepended for ``input_type`` ("query", "passage" or None for none)."""
        if input_type is None:
            return ""
        if input_type == "query":
            return self.query_prefix
        if input_type == "passage":
            return self.passage_prefix
        raise ValueError(f"input_type must be 'query', 'passage' or omitted, got {input_type!r}")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ModelConfig:
        """Build the config from a store manifest (or a catalog entry, which uses the same
        keys), naming the key that is missing or wrong."""
        missing = [k for k in ("dimensions", "max_tokens", "pooling") if k not in manifest]
        if missing:
            raise ModelConfigError(f"model config lacks {', '.join(missing)}")
        prefixes = manifest.get("prefixes") or {}
        cuts = manifest.get("matryoshka_dimensions") or []
        try:
            dense = tuple(
                DenseLayer(
                    path=str(layer["path"]),
                    in_features=int(layer["in_features"]),
                    out_features=int(layer["out_features"]),
                    activation=str(layer.get("activation", "identity")),
                    bias=bool(layer.get("bias", True)),
                )
                for layer in manifest.get("dense") or []
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelConfigError(f"model config has an invalid dense layer: {exc}") from None
        try:
            dimensions = int(manifest["dimensions"])
            max_tokens = int(manifest["max_tokens"])
            query_prefix = str(prefixes.get("query", ""))
            passage_prefix = str(prefixes.get("passage", ""))
            if not isinstance(cuts, list) or any(
                not isinstance(d, int) or isinstance(d, bool) for d in cuts
            ):
                raise ValueError(f"matryoshka_dimensions must be a list of integers, got {cuts!r}")
        except (TypeError, ValueError, AttributeError) as exc:
            raise ModelConfigError(f"model config has an invalid value: {exc}") from None
        return cls(
            dimensions=dimensions,
            max_tokens=max_tokens,
            pooling=str(manifest["pooling"]),
            normalize=bool(manifest.get("normalize", True)),
            query_prefix=query_prefix,
            passage_prefix=passage_prefix,
            matryoshka_dimensions=tuple(cuts),
            dense=dense,
        )

    def to_manifest(self) -> dict[str, Any]:
        """The manifest keys this config owns (``dense`` only where there is a Dense layer, so
        that manifests of models without one read as before)."""
        extra = {"dense": [layer.to_manifest() for layer in self.dense]} if self.dense else {}
        return {
            "dimensions": self.dimensions,
            "max_tokens": self.max_tokens,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "prefixes": {"query": self.query_prefix, "passage": self.passage_prefix},
            "matryoshka_dimensions": list(self.matryoshka_dimensions),
            **extra,
        }


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelConfigError(f"{path} is not valid JSON: {exc}") from None


def _module_kind(module_type: str) -> str:
    # "sentence_transformers.models.Pooling" and the newer
    # "sentence_transformers.sentence_transformer.modules.Pooling" both end in the class name.
    return module_type.rsplit(".", 1)[-1]


def _pooling_mode(config: Mapping[str, Any], path: Path) -> str:
    """The single pooling mode of a sentence-transformers Pooling config (old or new format)."""
    if "pooling_mode" in config:
        raw = config["pooling_mode"]
        modes = [raw] if isinstance(raw, str) else list(raw)
    else:
        modes = [mode for flag, mode in _LEGACY_POOLING_FLAGS.items() if config.get(flag)]
    if len(modes) != 1:
        raise ModelConfigError(
            f"{path} asks for pooling {' + '.join(map(str, modes)) or 'none'}; "
            f"the engine serves exactly one of {', '.join(POOLINGS)} pooling"
        )
    mode = str(modes[0])
    if mode == "lasttoken":
        raise ModelConfigError(
            f"{path} asks for last-token pooling, as decoder embedders (Qwen3-Embedding and "
            "the like) do; the engine serves encoder models with mean or CLS pooling only"
        )
    if mode not in POOLINGS:
        raise ModelConfigError(
            f"{path} asks for {mode!r} pooling; "
            f"the engine serves {', '.join(POOLINGS)} pooling only"
        )
    if config.get("include_prompt") is False:
        raise ModelConfigError(
            f"{path} excludes the prompt from pooling (include_prompt: false), "
            "which the engine does not support"
        )
    return mode


def read_model_config(directory: str | Path) -> ModelConfig:
    """Read a model's config from a Hugging Face / sentence-transformers repository layout.

    * dimensions: the Pooling module's embedding dimension, else ``config.json`` hidden_size;
    * max_tokens: ``sentence_bert_config.json`` max_seq_length, else the smaller of the
      tokenizer's model_max_length and ``config.json`` max_position_embeddings;
    * pooling: from the Pooling module's config (mean or CLS; anything else is refused); a
      plain transformers repository without one gets mean pooling, as sentence-transformers does;
    * normalize: whether ``modules.json`` lists a Normalize module; true without ``modules.json``;
    * prefixes: the "query" / "passage" prompts of ``config_sentence_transformers.json``, else
      none (the model catalog supplies them for models that document them elsewhere).
    """
    root = Path(directory)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ModelConfigError(f"{root} has no config.json; is it a Hugging Face model directory?")
    hf_config = _read_json(config_path)

    modules_path = root / "modules.json"
    modules: list[dict[str, Any]] = _read_json(modules_path) if modules_path.is_file() else []
    pooling_dir = "1_Pooling"
    dense_dirs: list[str] = []
    kinds = [_module_kind(str(module.get("type", ""))) for module in modules]
    for module, kind in zip(modules, kinds, strict=True):
        if kind not in _SUPPORTED_MODULES:
            raise ModelConfigError(
                f"{modules_path} uses a {kind} module, which the engine does not reproduce; "
                f"supported modules: {', '.join(sorted(_SUPPORTED_MODULES))}"
            )
        if kind == "Pooling":
            pooling_dir = str(module.get("path") or pooling_dir)
        elif kind == "Dense":
            dense_dirs.append(str(module.get("path") or ""))
    order = [k for k in kinds if k in ("Pooling", "Dense", "Normalize")]
    if order and order != sorted(order, key=("Pooling", "Dense", "Normalize").index):
        raise ModelConfigError(
            f"{modules_path} orders its modules {' -> '.join(kinds)}; the engine applies "
            "pooling, then Dense layers, then normalisation"
        )
    normalize = any(_module_kind(str(m.get("type", ""))) == "Normalize" for m in modules)
    if not modules:
        normalize = True

    pooling = "mean"
    dimensions = hf_config.get("hidden_size") or hf_config.get("dim") or hf_config.get("d_model")
    pooling_path = root / pooling_dir / "config.json"
    if pooling_path.is_file():
        pooling_config = _read_json(pooling_path)
        pooling = _pooling_mode(pooling_config, pooling_path)
        dimensions = (
            pooling_config.get("embedding_dimension")
            or pooling_config.get("word_embedding_dimension")
            or dimensions
        )
    if not dimensions:
        raise ModelConfigError(
            f"cannot tell the embedding dimensions: {config_path} has no hidden_size and "
            f"{pooling_path} gives no embedding dimension"
        )

    dense = tuple(_dense_layer(root, folder) for folder in dense_dirs)
    if dense:
        dimensions = dense[-1].out_features

    max_tokens: int | None = None
    st_path = root / "sentence_bert_config.json"
    if st_path.is_file():
        max_tokens = _read_json(st_path).get("max_seq_length")
    if not max_tokens:
        limits: list[int] = []
        if "max_position_embeddings" in hf_config:
            limits.append(int(hf_config["max_position_embeddings"]))
        tok_path = root / "tokenizer_config.json"
        if tok_path.is_file():
            model_max = _read_json(tok_path).get("model_max_length")
            if isinstance(model_max, int | float) and model_max < _NO_LIMIT:
                limits.append(int(model_max))
        if not limits:
            raise ModelConfigError(
                f"cannot tell the longest input of {root}: no max_seq_length in "
                "sentence_bert_config.json, no model_max_length in tokenizer_config.json and "
                "no max_position_embeddings in config.json"
            )
        max_tokens = min(limits)

    prefixes: Mapping[str, Any] = {}
    st_model_path = root / "config_sentence_transformers.json"
    if st_model_path.is_file():
        prefixes = _read_json(st_model_path).get("prompts") or {}

    return ModelConfig(
        dimensions=int(dimensions),
        max_tokens=int(max_tokens),
        pooling=pooling,
        normalize=normalize,
        query_prefix=str(prefixes.get("query", "")),
        passage_prefix=str(prefixes.get("passage", prefixes.get("document", ""))),
        dense=dense,
    )


def _dense_layer(root: Path, folder: str) -> DenseLayer:
    """A Dense module's config (``<folder>/config.json``), as the engine applies it."""
    path = root / folder / "config.json"
    if not folder or not path.is_file():
        raise ModelConfigError(f"the Dense module's folder {root / folder} has no config.json")
    config = _read_json(path)
    raw = str(config.get("activation_function") or "torch.nn.modules.linear.Identity")
    name = raw.rsplit(".", 1)[-1]
    if name not in _TORCH_ACTIVATIONS:
        raise ModelConfigError(
            f"{path} uses activation {raw}; the engine applies "
            f"{', '.join(sorted(_TORCH_ACTIVATIONS))}"
        )
    try:
        return DenseLayer(
            path=folder,
            in_features=int(config["in_features"]),
            out_features=int(config["out_features"]),
            activation=_TORCH_ACTIVATIONS[name],
            bias=bool(config.get("bias", True)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelConfigError(f"{path} lacks or has a bad {exc}") from None


# The activations CrossEncoder may name (as a torch class path) that the reranker applies.
RERANK_ACTIVATIONS = ("sigmoid", "identity")
_RERANK_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "identity"}


# -- rerankers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RerankConfig:
    """What scoring a pair needs besides the weights: the length limit of the pair (special
    tokens included), the activation ``CrossEncoder.predict`` applies to the logit, and the
    labels of the head (exactly one: its logit is the relevance)."""

    max_tokens: int
    activation: str = "sigmoid"
    num_labels: int = 1
    kind: ClassVar[str] = "reranker"

    def __post_init__(self) -> None:
        if self.num_labels != 1:
            raise ModelConfigError(
                f"the classification head has {self.num_labels} labels; a reranker needs exactly "
                "one, whose logit is the relevance score"
            )
        if self.activation not in RERANK_ACTIVATIONS:
            raise ModelConfigError(
                f"activation {self.activation!r} is not supported; use one of "
                f"{', '.join(RERANK_ACTIVATIONS)}"
            )
        if self.max_tokens < 2:
            raise ModelConfigError(f"max_tokens must be at least 2, got {self.max_tokens}")

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> RerankConfig:
        """Build the config from a store manifest, naming the key that is missing or wrong."""
        missing = [k for k in ("max_tokens", "activation", "num_labels") if k not in manifest]
        if missing:
            raise ModelConfigError(f"rerank config lacks {', '.join(missing)}")
        try:
            max_tokens, num_labels = int(manifest["max_tokens"]), int(manifest["num_labels"])
        except (TypeError, ValueError) as exc:
            raise ModelConfigError(f"rerank config has an invalid value: {exc}") from None
        return cls(
            max_tokens=max_tokens, activation=str(manifest["activation"]), num_labels=num_labels
        )

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "max_tokens": self.max_tokens,
            "activation": self.activation,
            "num_labels": self.num_labels,
        }


def _activation_path(root: Path, hf_config: Mapping[str, Any]) -> str | None:
    """The activation CrossEncoder loads, as the torch class path it names (None: its default).

    In CrossEncoder's order: ``config_sentence_transformers.json``, then ``config.json``'s
    ``sentence_transformers`` entry, else its pre-4.0 ``sbert_ce_default_activation_function``.
    A path outside ``torch`` is code CrossEncoder runs only with ``trust_remote_code``; without
    it, as here, it falls back to its default, and so does this.
    """
    candidates = []
    st_path = root / "config_sentence_transformers.json"
    if st_path.is_file():
        candidates.append(_read_json(st_path).get("activation_fn"))
    embedded = hf_config.get("sentence_transformers")
    if isinstance(embedded, dict) and "activation_fn" in embedded:
        candidates.append(embedded["activation_fn"])
    else:
        candidates.append(hf_config.get("sbert_ce_default_activation_function"))
    return next((p for p in candidates if isinstance(p, str) and p.startswith("torch.")), None)


def read_rerank_config(directory: str | Path) -> RerankConfig:
    """Read a cross-encoder's config from its repository (as CrossEncoder saves one).

    * max_tokens: as ``read_model_config`` reads it for embedders, which is where CrossEncoder
      cuts too: ``sentence_bert_config.json`` max_seq_length, else the tokenizer's
      model_max_length capped by ``config.json`` max_position_embeddings;
    * num_labels: the labels of ``config.json`` (``id2label``, else ``num_labels``, else
      transformers' default of 2); anything but 1 is refused;
    * activation: the one ``config_sentence_transformers.json`` (or ``config.json``) names,
      Sigmoid or Identity, else sigmoid, CrossEncoder's default for one label.

    A repository whose scores are not its classifier's logit (sentence-transformers modules
    after the transformer, or a generative model scoring yes/no tokens) is refused.
    """
    root = Path(directory)
    config_path = root / "config.json"
    if not config_path.is_file():
        raise ModelConfigError(f"{root} has no config.json; is it a Hugging Face model directory?")
    hf_config = _read_json(config_path)
    architectures = hf_config.get("architectures") or []
    if architectures and not any(
        str(a).endswith("ForSequenceClassification") for a in architectures
    ):
        raise ModelConfigError(
            f"{config_path} describes a {', '.join(map(str, architectures))}; the reranker "
            "serves cross-encoders with a sequence-classification head"
        )
    modules_path = root / "modules.json"
    if modules_path.is_file():
        kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in _read_json(modules_path)]
        if kinds != ["Transformer"]:
            raise ModelConfigError(
                f"{modules_path} lists modules {' -> '.join(kinds) or 'none'}; the reranker "
                "serves a Transformer alone, whose classifier logit is the score"
            )
    labels = hf_config.get("id2label")
    if isinstance(labels, dict) and labels:
        if len(labels) != 1:
            names = ", ".join(map(str, labels.values()))
            raise ModelConfigError(
                f"{config_path} gives the classification head {len(labels)} labels ({names}); "
                "a reranker needs exactly one, whose logit is the relevance score"
            )
        num_labels = 1
    else:
        num_labels = int(hf_config.get("num_labels", 2))
    activation = "sigmoid"
    path = _activation_path(root, hf_config)
    if path is not None:
        name = path.rsplit(".", 1)[-1]
        if name not in _RERANK_ACTIVATIONS:
            raise ModelConfigError(
                f"{root} scores with activation {path}; the reranker applies "
                f"{' or '.join(sorted(_RERANK_ACTIVATIONS))}"
            )
        activation = _RERANK_ACTIVATIONS[name]
    return RerankConfig(
        max_tokens=read_model_config(root).max_tokens,
        activation=activation,
        num_labels=num_labels,
    )


def config_from_manifest(manifest: Mapping[str, Any]) -> ModelConfig | RerankConfig:
    """The config of a store manifest or catalog entry of either kind (``kind``: "embedding",
    the default of manifests that name none, or "reranker")."""
    kind = manifest.get("kind") or "embedding"
    if kind == "reranker":
        return RerankConfig.from_manifest(manifest)
    if kind == "embedding":
        return ModelConfig.from_manifest(manifest)
    raise ModelConfigError(f"kind {kind!r} is not one of {', '.join(MODEL_KINDS)}")


def read_config(directory: str | Path) -> ModelConfig | RerankConfig:
    """A repository's config: a reranker's where ``config.json`` names a sequence-classification
    head, else an embedder's."""
    if is_cross_encoder(directory):
        return read_rerank_config(directory)
    return read_model_config(directory)


def is_cross_encoder(directory: str | Path) -> bool:
    config_path = Path(directory) / "config.json"
    if not config_path.is_file():
        return False
    architectures = _read_json(config_path).get("architectures") or []
    return any(str(a).endswith("ForSequenceClassification") for a in architectures)
