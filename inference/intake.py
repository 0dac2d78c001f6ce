"""Adding a model to the catalog: inspect a source, refuse what cannot be served faithfully,
and describe the rest as a catalog entry.

A source is ``hf:ORG/REPO[@REVISION]`` (the Hugging Face Hub, through ``huggingface_hub``) or a
folder laid out like a Hub repository. ``inspect_source`` reads only the file list and the small
JSON files (and the model card) before anything large is downloaded, and says what it found:
architecture, parameters and download size, dimensions (after any Dense layer), max tokens,
pooling, normalisation, prompts, Matryoshka dimensions, license and memory need. What cannot
be served faithfully is refused with the reason and what to do instead (``Inspection.refusals``):
an architecture the exporter does not handle, remote code, no tokenizer, a generative model, a
gated or missing repository, a model too large for this machine.

A cross-encoder (a ``*ForSequenceClassification`` head with one label) is a reranker: it is
inspected and added the same way, with its own facts (max tokens, activation), and serves
``rank()`` and the rerank routes instead of embeddings. Asked for one kind, a source of the
other is refused, naming its kind.

``Inspection.entry`` is the catalog entry to store (``catalog.add_entry``); a deployment of it
then runs the parity gate (``inference/parity.py``) before the model serves.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import json
import math
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inference import layout
from inference.catalog import INT8_THRESHOLDS, parse_uri
from inference.modelconfig import (
    MODEL_KINDS,
    ModelConfig,
    ModelConfigError,
    RerankConfig,
    read_model_config,
    read_rerank_config,
)
from inference.resources import Resources, probe

# The encoder architectures the ONNX exporter is known to reproduce (config.json model_type).
EXPORT_ARCHITECTURES = ("bert", "roberta", "xlm-roberta", "mpnet", "distilbert")
# The cross-encoder architectures the exporter reproduces with their classification head.
RERANK_ARCHITECTURES = ("bert", "roberta", "xlm-roberta")
# config.json ``architectures`` endings of cross-encoders (rerankers) and generative models.
_CROSS_ENCODER_HEADS = ("ForSequenceClassification",)
_GENERATIVE_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSeq2SeqLM")
# Bytes per parameter of each torch_dtype a config may declare (weights on disk).
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_MB = 1024 * 1024
# Memory a model needs, as multiples of its fp32 weights plus a fixed part for the runtimes,
# measured with bench/addmodel.py on a model shaped like bge-base (418 MB of weights): deploying
# peaked at 4.7 GB (PyTorch's model, the traced export, the optimiser's copies, ONNX Runtime's
# sessions of the parity gate), the sidecar held 1.9 GB serving it (a session per batch worker).
_DEPLOY_FACTOR = 11.0
_SERVE_FACTOR = 5.0
_MEMORY_BASE_MB = 256
# The small files read before a download are capped: a "config" larger than this is no config.
_SMALL_FILE_LIMIT = 4 * _MB
# Well-known licenses of model cards (their Hub identifiers) and where each is written.
_LICENSE_URLS = {
    "apache-2.0": "https://www.apache.org/licenses/LICENSE-2.0",
    "mit": "https://opensource.org/license/mit",
    "bsd-3-clause": "https://opensource.org/license/bsd-3-clause",
    "cc-by-4.0": "https://creativecommons.org/licenses/by/4.0/",
    "cc-by-sa-4.0": "https://creativecommons.org/licenses/by-sa/4.0/",
    "cc-by-nc-4.0": "https://creativecommons.org/licenses/by-nc/4.0/",
    "cc-by-nc-sa-4.0": "https://creativecommons.org/licenses/by-nc-sa/4.0/",
    "gpl-3.0": "https://www.gnu.org/licenses/gpl-3.0.html",
}
_MATRYOSHKA = re.compile(r"[\"']?matryoshka_dim(?:ension)?s[\"']?\s*:\s*\[([\d,\s]+)\]")
_HUB_SOURCE = re.compile(r"^hf:([A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@([\w./-]+))?$")


class IntakeError(ValueError):
    """A source that cannot even be inspected (bad syntax, no such folder or repository, the Hub
    out of reach); the message says what to do."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "hub" | "folder"
    ref: str  # repo id, or the folder's absolute path
    revision: str | None = None  # hub only; None: main

    @property
    def label(self) -> str:
        if self.kind == "hub":
            return f"hf:{self.ref}" + (f"@{self.revision}" if self.revision else "")
        return self.ref


def parse_source(text: str) -> SourceSpec:
    """``hf:ORG/REPO[@REVISION]`` or the path of a folder (made absolute)."""
    text = (text or "").strip()
    if not text:
        raise IntakeError(
            "give a source: hf:ORG/REPO (a Hugging Face Hub repository, optionally @REVISION) or "
            "the path of a folder laid out like one"
        )
    if text.startswith("hf:"):
        match = _HUB_SOURCE.match(text)
        if not match:
            raise IntakeError(
                f"{text!r} is not a Hub source: write hf:ORG/REPO or hf:ORG/REPO@REVISION, for "
                "example hf:BAAI/bge-small-en-v1.5"
            )
        return SourceSpec("hub", match.group(1), match.group(2))
    if "\0" in text:
        raise IntakeError("a source cannot hold a NUL character")
    try:
        path = Path(text).expanduser()
    except RuntimeError:  # "~someone" with no such user
        path = Path(text)
    if not path.is_absolute():
        raise IntakeError(
            f"{text!r} is neither hf:ORG/REPO nor an absolute folder path; give the folder's full "
            "path (on the worker's machine)"
        )
    if not path.is_dir():
        raise IntakeError(f"{path} is not a folder on this machine")
    return SourceSpec("folder", str(path.resolve()))


@dataclass(frozen=True)
class Refusal:
    reason: str
    advice: str

    def __str__(self) -> str:
        return f"{self.reason}. {self.advice}"


@dataclass
class Inspection:
    """What a source holds, and whether it can be served faithfully."""

    source: SourceSpec
    revision: str | None  # the Hub commit inspected
    files: dict[str, int]  # path -> bytes
    model_type: str | None = None
    architectures: list[str] = field(default_factory=list)
    parameters: int | None = None
    parameters_exact: bool = False  # counted from the weights' header, not guessed from size
    download_bytes: int = 0
    hidden_size: int | None = None
    num_heads: int = 0
    config: ModelConfig | RerankConfig | None = None
    prompts: dict[str, str] = field(default_factory=dict)
    license: dict[str, str] | None = None  # None: the card declares none ("unknown")
    memory_mb: int = 0  # to deploy, the larger need: what the machine is checked against
    serve_memory_mb: int = 0
    onnx: str | None = None  # the fp32 graph the source ships, if any
    kind: str | None = "embedding"  # None: neither kind (a generative model)
    refusals: list[Refusal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refusals

    @property
    def dimensions(self) -> int | None:
        return self.config.dimensions if isinstance(self.config, ModelConfig) else None

    @property
    def proposed_uri(self) -> str:
        """``<repository or folder name>:v1``, cut to the characters a URI allows."""
        base = self.source.ref.rstrip("/").rsplit("/", 1)[-1]
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", base)
        name = re.sub(r"\.{2,}", ".", name).strip("-._") or "model"
        return f"{name}:v1"

    @property
    def needs_export(self) -> bool:
        return self.onnx is None

    def refuse(self, reason: str, advice: str) -> None:
        self.refusals.append(Refusal(reason, advice))

    def facts(self) -> list[tuple[str, str]]:
        """What was found, as label and value, for people."""
        config = self.config if isinstance(self.config, ModelConfig) else None
        params = "unknown"
        if self.parameters:
            estimated = "" if self.parameters_exact else " (estimated from the weights' size)"
            params = f"{self.parameters / 1e6:,.1f} M{estimated}"
        exported = ": exported with PyTorch at deployment" if self.ok else ""
        license_text = "unknown (the model card declares none)"
        if self.license:
            license_text = self.license["name"]
        if self.kind == "reranker":
            kind = "reranker (cross-encoder: scores query-document pairs)"
        elif self.kind == "embedding":
            kind = "embedding (a vector per text)"
        else:
            kind = "neither an embedding model nor a reranker"
        rows = [
            ("Source", self.source.label + (f" ({self.revision[:12]})" if self.revision else "")),
            ("Kind", kind),
            ("Architecture", f"{self.model_type or '?'} ({', '.join(self.architectures) or '?'})"),
            ("Parameters", params),
            (
                "Download" if self.source.kind == "hub" else "Files to copy",
                f"{self.download_bytes / _MB:,.1f} MB",
            ),
            ("Hidden size", str(self.hidden_size or "?")),
        ]
        if isinstance(self.config, RerankConfig):
            rows += [
                ("Max tokens", f"{self.config.max_tokens} (query and document together)"),
                ("Score", f"{self.config.activation} of the classifier's one logit"),
            ]
        else:
            rows += self._embedding_facts(config)
        rows += [
            ("License", license_text),
            (
                "Memory needed",
                f"about {self.memory_mb:,} MB to deploy, {self.serve_memory_mb:,} MB to serve",
            ),
            ("ONNX graph", self.onnx or f"none shipped{exported}"),
        ]
        return [(label, value or "none") for label, value in rows]

    def _embedding_facts(self, config: ModelConfig | None) -> list[tuple[str, str]]:
        return [
            ("Output dimensions", str(config.dimensions) if config else "?"),
            ("Max tokens", str(config.max_tokens) if config else "?"),
            ("Pooling", config.pooling if config else "?"),
            ("Dense layers", _dense_text(config)),
            ("Normalised", ("yes" if config.normalize else "no") if config else "?"),
            ("Prompts", "; ".join(f'{k}: "{v}"' for k, v in self.prompts.items()) or "none"),
            (
                "Matryoshka dimensions",
                ", ".join(map(str, config.matryoshka_dimensions)) if config else "",
            ),
        ]

    def entry(self, uri: str, *, added_by: str = "", title: str = "") -> dict[str, Any]:
        """The catalog entry for this model under ``uri`` (ValueError if it cannot be added)."""
        if not self.ok or self.config is None:
            raise ValueError("; ".join(map(str, self.refusals)) or "the source was not inspected")
        name, version = parse_uri(uri)
        sources: dict[str, Any]
        if self.source.kind == "hub":
            sources = {
                "hub": {
                    "repo_id": self.source.ref,
                    # The commit inspected: what deploys is what was checked here.
                    "revision": self.revision or self.source.revision or "main",
                    "onnx": self.onnx,
                    "allow_patterns": list(layout.hub_files(self.onnx)),
                }
            }
            default_source = "hub"
        else:
            sources = {"local": {"path": self.source.ref}}
            default_source = "local"
        card = f"https://huggingface.co/{self.source.ref}" if self.source.kind == "hub" else ""
        license_entry = dict(self.license or {"name": "unknown", "url": ""})
        if isinstance(self.config, RerankConfig):
            what = f"cross-encoder reranker, {self.config.max_tokens} tokens per pair"
        else:
            what = f"encoder, {self.config.dimensions} dimensions, {self.config.pooling} pooling"
        return {
            "uri": uri,
            "title": title or name,
            "description": f"Added from {self.source.label}: {self.model_type or 'transformer'} "
            f"{what}.",
            "kind": self.kind,
            **self.config.to_manifest(),
            "license": license_entry,
            "model_card": card,
            "architecture": {
                "model_type": self.model_type or "",
                "hidden_size": self.hidden_size or 0,
                "num_heads": self.num_heads,
                "parameters": self.parameters,
            },
            "memory_mb": self.memory_mb,
            "disk_mb": math.ceil(self.download_bytes * 2 / _MB) + 1,
            "min_cores": 1,
            "int8": {"thresholds": dict(INT8_THRESHOLDS[self.config.kind])},
            "default_source": default_source,
            "sources": sources,
            "added": {
                "by": added_by,
                "at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "source": self.source.label,
                "version": version,
            },
        }


def _dense_text(config: ModelConfig | None) -> str:
    if config is None or not config.dense:
        return "none"
    return ", ".join(f"{d.in_features} → {d.out_features} ({d.activation})" for d in config.dense)


# -- reading a source -------------------------------------------------------------------------


def _folder_files(folder: Path) -> dict[str, int]:
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".git" not in p.relative_to(folder).parts
    }


def _safetensors_parameters(path: Path) -> int | None:
    """Parameters in a safetensors file, from its header alone."""
    try:
        with open(path, "rb") as fh:
            (length,) = struct.unpack("<Q", fh.read(8))
            if length > 100 * _MB:
                return None
            header = json.loads(fh.read(length))
    except (OSError, struct.error, ValueError):
        return None
    return sum(
        math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__" and "shape" in t
    )


def _hub_files(spec: SourceSpec, into: Path, endpoint: str | None) -> tuple[dict[str, int], str]:
    """The repository's file list (path -> size) and commit; its small description files are
    downloaded into ``into``. IntakeError for a missing, gated or unreachable repository."""
    import httpx2
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from inference.sources import hub_endpoint, hub_offline, hub_reachable

    endpoint = endpoint or hub_endpoint()
    repo, revision = spec.ref, spec.revision or "main"
    if hub_offline():
        raise IntakeError(
            "HF_HUB_OFFLINE is set, so the Hugging Face Hub is not asked: unset it for the "
            "console and the workers to add models from the Hub, or add the model from a folder"
        )
    if not hub_reachable(endpoint):
        raise IntakeError(
            f"the Hugging Face Hub ({endpoint}) cannot be reached from this machine; download "
            f"the repository elsewhere (`hf download {repo} --local-dir {repo.split('/')[-1]}`), "
            "copy the folder here and add it by its path"
        )
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo, revision=revision)
        commit = str(info.sha or revision)
        files = {
            item.path: int(getattr(item, "size", 0) or 0)
            for item in api.list_repo_tree(repo, revision=commit, recursive=True)
            if getattr(item, "size", None) is not None
        }
        if info.gated:
            # The file list is public; the files are not until the terms are accepted.
            hf_hub_download(repo, "config.json", revision=commit, local_dir=into, endpoint=endpoint)
        for rel in layout.DESCRIPTION_FILES:
            if rel in files and files[rel] <= _SMALL_FILE_LIMIT:
                hf_hub_download(repo, rel, revision=commit, local_dir=into, endpoint=endpoint)
    except GatedRepoError:
        raise IntakeError(
            f"{repo} is a gated repository: its files are shared only with users who accept its "
            "terms. Accept them on the model's Hub page, set HF_TOKEN for the worker, and add "
            "it again"
        ) from None
    except RevisionNotFoundError:
        raise IntakeError(f"{repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise IntakeError(
            f"there is no Hub repository {repo} (or it is private); check the name, or set "
            "HF_TOKEN for a private one"
        ) from None
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        raise IntakeError(f"cannot read {repo} from the Hugging Face Hub: {exc}") from None
    return files, commit


def _hub_parameters(spec: SourceSpec, commit: str, endpoint: str | None) -> int | None:
    """Parameters from the safetensors headers on the Hub (a ranged read, not a download)."""
    from huggingface_hub import HfApi

    from inference.sources import hub_endpoint

    try:
        meta = HfApi(endpoint=endpoint or hub_endpoint()).get_safetensors_metadata(
            spec.ref, revision=commit
        )
    except Exception:  # a best-effort figure: the size of the weights estimates it otherwise
        return None
    return int(sum(meta.parameter_count.values())) or None


def inspect_source(
    source: str,
    *,
    machine: Resources | None = None,
    endpoint: str | None = None,
    kind: str | None = None,
) -> Inspection:
    """Inspect ``source`` (``hf:ORG/REPO[@REV]`` or a folder) without downloading the model.
    IntakeError when the source cannot be read at all; other problems are refusals. ``kind``
    ("embedding" or "reranker"; None: whichever the source is) refuses a source of the other
    kind."""
    if kind is not None and kind not in MODEL_KINDS:
        raise IntakeError(f"kind must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
    spec = parse_source(source)
    machine = machine or probe()
    with tempfile.TemporaryDirectory(prefix="inspect-") as tmp:
        if spec.kind == "hub":
            files, commit = _hub_files(spec, Path(tmp), endpoint)
            folder = Path(tmp)
        else:
            folder, commit = Path(spec.ref), None
            files = _folder_files(folder)
        inspection = Inspection(source=spec, revision=commit, files=files)
        _inspect_folder(inspection, folder, kind)
        if inspection.parameters is None and spec.kind == "hub" and commit:
            counted = _hub_parameters(spec, commit, endpoint)
            if counted:
                inspection.parameters, inspection.parameters_exact = counted, True
    _size_and_memory(inspection, machine)
    return inspection


def _read_json(folder: Path, rel: str) -> dict[str, Any]:
    path = folder / rel
    if not path.is_file() or path.stat().st_size > _SMALL_FILE_LIMIT:
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _inspect_folder(ins: Inspection, folder: Path, wanted: str | None) -> None:
    files = ins.files
    config = _read_json(folder, "config.json")
    if "config.json" not in files or not config:
        ins.refuse(
            "the source has no readable config.json, so it is not a transformers model",
            "Point at the folder (or repository) that holds the model's config.json",
        )
        return
    ins.model_type = str(config.get("model_type") or "") or None
    ins.architectures = [str(a) for a in config.get("architectures") or []]
    ins.hidden_size = config.get("hidden_size") or config.get("dim") or config.get("d_model")
    ins.num_heads = int(config.get("num_attention_heads") or config.get("n_heads") or 0)
    ins.onnx = next((rel for rel in layout.ONNX_FILES["fp32"] if rel in files), None)
    ins.license = _license(folder)
    modules = folder / "modules.json"
    module_types = []
    if modules.is_file():
        try:
            module_types = [str(m.get("type", "")) for m in json.loads(modules.read_text())]
        except (OSError, ValueError, AttributeError):
            module_types = []
    weights = folder / "model.safetensors"
    ins.parameters = _safetensors_parameters(weights) if weights.is_file() else None
    ins.parameters_exact = ins.parameters is not None

    heads = " ".join(ins.architectures)
    remote = bool(config.get("auto_map")) or any(
        t and not t.startswith("sentence_transformers.") for t in module_types
    )
    st_model = _read_json(folder, "config_sentence_transformers.json")
    st_task = _read_json(folder, "sentence_bert_config.json").get("transformer_task")
    cross_encoder = (
        any(heads.endswith(h) for h in _CROSS_ENCODER_HEADS)
        or st_model.get("model_type") == "CrossEncoder"
        or st_task == "sequence-classification"
    )
    ins.kind = "reranker" if cross_encoder else "embedding"
    if wanted == "embedding" and cross_encoder:
        ins.refuse(
            f"{', '.join(ins.architectures) or 'the model'} is a cross-encoder (a reranker): it "
            "scores query-document pairs and gives no embeddings",
            "Add it as a reranker, or add an embedding model (a sentence-transformers "
            "bi-encoder) for embeddings",
        )
    elif wanted == "reranker" and not cross_encoder:
        ins.refuse(
            f"{', '.join(ins.architectures) or 'the model'} is an embedding model: it gives a "
            "vector per text and has no classification head to score pairs with",
            "Add it as an embedding model, or add a cross-encoder "
            "(*ForSequenceClassification with one label) as the reranker",
        )
    elif any(heads.endswith(h) for h in _GENERATIVE_HEADS) and not module_types:
        ins.kind = None
        ins.refuse(
            f"{', '.join(ins.architectures)} is a generative language model, not an embedding "
            "model",
            "Add an embedding model (one with a sentence-transformers configuration) instead",
        )
    if remote:
        where = "config.json auto_map" if config.get("auto_map") else "modules.json"
        if ins.onnx is None:
            ins.refuse(
                f"the model needs trust_remote_code (its {where} names Python code in the "
                "repository) and ships no ONNX graph; this product never runs a repository's "
                "Python code",
                "Choose a model whose architecture transformers supports natively, or one that "
                "ships onnx/model.onnx",
            )
        else:
            ins.refuse(
                f"the model needs trust_remote_code (its {where} names Python code in the "
                "repository): its ONNX graph cannot be checked against the original without "
                "running that code, which this product never does",
                "Choose a model whose architecture transformers supports natively",
            )
    elif ins.model_type not in _architectures(ins.kind) and not ins.refusals:
        supported = _architectures(ins.kind)
        ins.refuse(
            f"architecture {ins.model_type or 'unknown'!s} "
            f"({', '.join(ins.architectures) or 'no architectures'}) is not one the ONNX "
            f"exporter supports for {'rerankers' if cross_encoder else 'embedders'} "
            f"({', '.join(supported)})",
            "Choose a model of a supported architecture",
        )
    if "tokenizer.json" not in files:
        ins.refuse(
            "the source has no tokenizer (tokenizer.json): the engine needs the model's fast "
            "tokenizer",
            "Add the tokenizer.json that transformers' tokenizer.save_pretrained() writes, or "
            "choose a repository that has one",
        )
    if not any(rel in files for rel in layout.WEIGHT_FILES):
        ins.refuse(
            "the source has no PyTorch weights (model.safetensors or pytorch_model.bin): there is "
            "no original model to export or to check the serving graph against",
            "Choose a repository that publishes its weights",
        )
    if "2_Dense/config.json" in files and "2_Dense/model.safetensors" not in files:
        ins.refuse(
            "its Dense layer ships no 2_Dense/model.safetensors (only older PyTorch weights)",
            "Re-save the model with a current sentence-transformers, which writes safetensors",
        )
    if remote:
        return  # its modules' code is what would say how it pools: nothing more to read
    if cross_encoder:
        try:
            ins.config = read_rerank_config(folder)
        except ModelConfigError as exc:
            ins.refuse(
                f"the cross-encoder cannot be served as a reranker: {exc}",
                "Choose a cross-encoder whose head gives one relevance logit (sentence-"
                "transformers CrossEncoder with num_labels=1)",
            )
        return
    try:
        ins.config = read_model_config(folder)
    except ModelConfigError as exc:
        ins.refuse(f"the model's configuration cannot be served as it is: {exc}", _ST_ADVICE)
        return
    ins.prompts = {str(k): str(v) for k, v in (st_model.get("prompts") or {}).items() if v}
    cuts = _matryoshka(folder, ins.config.dimensions)
    if cuts:
        ins.config = ModelConfig(**{**ins.config.__dict__, "matryoshka_dimensions": cuts})
    if not modules.is_file():
        ins.notes.append(
            "no sentence-transformers configuration (modules.json): mean pooling and "
            "normalisation are assumed, as sentence-transformers does for a plain transformer"
        )


def _architectures(kind: str | None) -> tuple[str, ...]:
    return RERANK_ARCHITECTURES if kind == "reranker" else EXPORT_ARCHITECTURES


_ST_ADVICE = (
    "Only models whose sentence-transformers modules are Transformer, Pooling (mean or CLS), "
    "Dense and Normalize can be served"
)


def _license(folder: Path) -> dict[str, str] | None:
    """The license the model card's front matter declares (None: none declared)."""
    from huggingface_hub.repocard import metadata_load

    card = folder / layout.MODEL_CARD
    if not card.is_file():
        return None
    try:
        meta = metadata_load(card) or {}
    except Exception:  # a card whose front matter does not parse declares nothing we can read
        return None
    name = meta.get("license")
    if isinstance(name, list):
        name = name[0] if name else None
    if not name:
        return None
    name = str(name)
    url = str(meta.get("license_link") or _LICENSE_URLS.get(name.lower(), ""))
    if name == "other" and meta.get("license_name"):
        name = str(meta["license_name"])
    return {"name": name, "url": url}


def _matryoshka(folder: Path, dimensions: int) -> tuple[int, ...]:
    """The shorter dimensions a model card says the model was trained for (sentence-transformers
    cards print the MatryoshkaLoss parameters, ``"matryoshka_dims": [768, 512, ...]``)."""
    card = folder / layout.MODEL_CARD
    if not card.is_file():
        return ()
    match = _MATRYOSHKA.search(card.read_text(encoding="utf-8", errors="replace"))
    if not match:
        return ()
    dims = {int(d) for d in re.findall(r"\d+", match.group(1))}
    return tuple(sorted(d for d in dims if 1 <= d < dimensions))


def _size_and_memory(ins: Inspection, machine: Resources) -> None:
    """The download (what a deployment takes), the parameters where the header gave none, and
    the memory need, refused when the machine has less."""
    taken = [*layout.hub_files(ins.onnx), *layout.WEIGHT_FILES]
    ins.download_bytes = sum(
        size for rel, size in ins.files.items() if any(fnmatch.fnmatch(rel, p) for p in taken)
    )
    weights = next((ins.files[rel] for rel in layout.WEIGHT_FILES if rel in ins.files), 0)
    if ins.parameters is None and weights:
        ins.parameters = weights // 4  # fp32 weights, the common case
        ins.parameters_exact = False
    fp32_mb = (ins.parameters or 0) * 4 / _MB
    ins.memory_mb = math.ceil(fp32_mb * _DEPLOY_FACTOR + _MEMORY_BASE_MB)
    ins.serve_memory_mb = math.ceil(fp32_mb * _SERVE_FACTOR + _MEMORY_BASE_MB)
    if ins.memory_mb > machine.memory_mb:
        ins.refuse(
            f"the model needs about {ins.memory_mb:,} MB of memory to deploy (and "
            f"{ins.serve_memory_mb:,} MB to serve); this machine has {machine.memory_mb:,} MB",
            "Choose a smaller model, or add it on a machine with more memory",
        )
