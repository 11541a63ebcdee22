"""Model zoo: manifest lookup, verified downloads with a cache, and official-checkpoint conversion.

- Manifest: one YAML per family in ``model_zoo/`` (schema in ``model_zoo/README.md``); see
  :func:`get_entry`, :func:`list_entries`, :func:`load_pretrained`.
- Downloads: :func:`download` writes into :func:`cache_dir` atomically (temporary file, then
  ``os.replace``) after checking the SHA-256, so a half or wrong file is never loaded. Offline mode
  (``VISIONATTN_OFFLINE=1`` or ``offline=True``) only uses the cache.
- Conversion: families register ``@register_converter('<family>')``; :func:`load_checkpoint`
  accepts our format or the official one and loads strictly.
"""
import argparse
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn

from .safe_pickle import numpy_globals
from .registry import CONVERTERS, register_converter  # noqa: F401  (hub.register_converter is public)

# Containers official releases and mmengine wrap a state dict in, most specific first.
_CONTAINER_KEYS = ("state_dict", "model", "model_state", "params")


class LightningCallbackKey:
    """Stands in for a PyTorch-Lightning 1.x callback class (``ModelCheckpoint``...), which Lightning
    checkpoints of that era pickle as the dict key of their callback states (e.g. the released
    RestoreFormer(++) ``.ckpt`` files). The real class is never imported; this one does nothing."""


# Lightning 1.x callback classes that appear as keys of a checkpoint's "callbacks" dict.
_LIGHTNING_CALLBACKS = ("pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint",
                        "pytorch_lightning.callbacks.early_stopping.EarlyStopping")


def _safe_globals() -> List[Any]:
    """Non-tensor classes official checkpoints pickle next to their weights (training args, numpy
    metrics, Lightning 1.x callback keys as :class:`LightningCallbackKey`), allowed by
    ``torch.load(weights_only=True)``. Nothing here can run code on load."""
    return [argparse.Namespace, *numpy_globals(), *((LightningCallbackKey, name) for name in _LIGHTNING_CALLBACKS)]


def read_checkpoint(source: Union[str, Path], map_location="cpu", trusted: bool = False) -> Mapping:
    """Load a checkpoint object from a local path or an http(s) URL (downloaded to the cache).

    Files are read with ``torch.load(weights_only=True)`` plus a small allowlist of harmless
    classes (:func:`_safe_globals`). ``trusted=True`` turns the pickle safety off (arbitrary code
    can run): only for files you trust that hold other classes; it is never done implicitly.
    ``.safetensors`` files are read with safetensors.
    """
    source = str(source)
    if source.startswith(("http://", "https://")):
        path = download(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device=str(map_location))
        elif trusted:
            obj = torch.load(path, map_location=map_location, weights_only=False)
        else:
            # only those not allowed yet: leaving the context removes its globals again, which would
            # take away what allow_mmengine_checkpoints() had added for good (resuming a run fails)
            allowed = set(torch.serialization.get_safe_globals())
            with torch.serialization.safe_globals([g for g in _safe_globals() if g not in allowed]):
                obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises many types for truncated / non-pickle files
        msg = str(err)
        if "Unsupported global" in msg:
            bad = msg.split("Unsupported global:", 1)[1].split("was not")[0].strip()
            raise RuntimeError(
                f"checkpoint {str(path)!r} pickles {bad}, which is not on visionattn's allowlist of "
                f"safe classes. If you trust the file, read it with "
                f"visionattn.hub.read_checkpoint(path, trusted=True) (or --trust in tools/convert_checkpoint.py) "
                f"and save its state dict with torch.save."
            ) from err
        first = next((line for line in msg.splitlines() if line.strip()), "")
        raise RuntimeError(
            f"could not read checkpoint {str(path)!r}: it is corrupt, truncated or not a PyTorch "
            f"checkpoint ({type(err).__name__}: {first})"
        ) from err
    if not isinstance(obj, Mapping):
        raise RuntimeError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def extract_state_dict(checkpoint: Mapping) -> Dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint's usual containers (``state_dict``, ``model``...)."""
    for key in _CONTAINER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
            return dict(inner)
    if checkpoint and all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return dict(checkpoint)
    raise RuntimeError(f"no state dict found in checkpoint (top-level keys: {sorted(checkpoint)[:10]})")


def _strip_prefix(state_dict: Dict[str, torch.Tensor], model_keys) -> Optional[Dict[str, torch.Tensor]]:
    """Our own checkpoints, possibly saved from a task wrapper (``backbone.``/``net.``/``module.``)."""
    if set(state_dict) == set(model_keys):
        return state_dict
    for prefix in ("module.", "backbone.", "net.", "network.", "model.", "ema.", "module.backbone.", "module.net."):
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        if stripped and set(stripped) == set(model_keys):
            return stripped
    return None


def convert_checkpoint(checkpoint: Mapping, model: nn.Module, family: Optional[str] = None,
                       **kwargs) -> Dict[str, torch.Tensor]:
    """Return a state dict with ``model``'s keys from our format or the family's official one."""
    model_keys = model.state_dict().keys()
    if not kwargs:  # converter options (e.g. ema=True) mean the caller wants the official path
        try:
            ours = _strip_prefix(extract_state_dict(checkpoint), model_keys)
        except RuntimeError:  # no plain tensor dict in a known container: official layouts differ
            ours = None
        if ours is not None:
            return ours
    if family not in CONVERTERS:
        raise RuntimeError(
            f"checkpoint keys do not match the model and no converter is registered for family "
            f"{family!r} (registered: {sorted(CONVERTERS)})"
        )
    return CONVERTERS[family](checkpoint, model, **kwargs)


def load_checkpoint(model: nn.Module, source: Union[str, Path, Mapping], family: Optional[str] = None,
                    strict: bool = True, **kwargs) -> nn.Module:
    """Load weights from a path, URL or already-loaded checkpoint into ``model`` (strict by default)."""
    checkpoint = source if isinstance(source, Mapping) else read_checkpoint(source)
    state_dict = convert_checkpoint(checkpoint, model, family, **kwargs)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if strict and (missing or unexpected):
        raise RuntimeError(
            f"checkpoint does not fit {type(model).__name__}: missing keys {missing[:8]}"
            f"{'...' if len(missing) > 8 else ''}, unexpected keys {unexpected[:8]}"
            f"{'...' if len(unexpected) > 8 else ''}"
        )
    return model


# --- downloads and cache ----------------------------------------------------------------------

_CHUNK = 1 << 20


def cache_dir() -> Path:
    """Where downloads are kept: ``$VISIONATTN_HOME/checkpoints`` if set, else torch's hub cache
    ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default)."""
    home = os.environ.get("VISIONATTN_HOME")
    if home:
        return Path(home).expanduser() / "checkpoints"
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline(offline: Optional[bool] = None) -> bool:
    """``offline`` if given, else whether ``VISIONATTN_OFFLINE`` is set to 1/true/yes."""
    if offline is not None:
        return offline
    return os.environ.get("VISIONATTN_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _url_filename(url: str) -> str:
    name = os.path.basename(urllib.parse.urlparse(url).path)
    if not name:
        raise ValueError(f"cannot name a cache file after URL {url!r}: pass filename=")
    return name


def download(url: str, sha256: Optional[str] = None, progress: bool = True, *,
             filename: Optional[str] = None, offline: Optional[bool] = None, timeout: float = 60.0) -> Path:
    """Download ``url`` into :func:`cache_dir` and return the local path.

    A cached file is reused (after checking ``sha256`` when given). A new download streams into a
    temporary file in the cache directory, is checked for truncation (Content-Length) and against
    ``sha256``, and only then renamed into place, so no half or wrong file is ever left or loaded.
    In offline mode (see :func:`is_offline`) only the cache is used.
    """
    dest = cache_dir() / (filename or _url_filename(url))
    if sha256 is not None:
        sha256 = sha256.lower()
    if dest.is_file():
        if sha256 is None:
            return dest
        actual = file_sha256(dest)
        if actual == sha256:
            return dest
        if is_offline(offline):
            raise RuntimeError(
                f"cached file {str(dest)!r} has SHA-256 {actual}, expected {sha256}; it is corrupt or a "
                f"different file. Delete it and download again with the network on (offline mode is set)."
            )
        warnings.warn(f"cached {dest} has SHA-256 {actual}, expected {sha256}: downloading it again")
    if is_offline(offline):
        raise RuntimeError(
            f"offline mode (VISIONATTN_OFFLINE=1 or offline=True): {url} is not in the cache at "
            f"{str(dest)!r}. Download it once with the network on (python tools/zoo.py download NAME) "
            f"or copy the file there."
        )
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        _fetch(url, tmp, sha256, progress, timeout)
        os.replace(tmp, dest)  # atomic on one file system: readers see no file or the whole file
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def _fetch(url: str, tmp: Path, sha256: Optional[str], progress: bool, timeout: float) -> None:
    """Stream ``url`` into ``tmp``; raise RuntimeError on HTTP/network errors, truncation, bad hash."""
    from tqdm import tqdm

    digest = hashlib.sha256()
    received = 0
    request = urllib.request.Request(url, headers={"User-Agent": "visionattn"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=tmp.name[1:].rsplit(".", 2)[0], disable=not progress) as bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"download of {url} failed: HTTP {err.code} {err.reason}. "
                           f"Check the URL, or download the file by hand and pass its path.") from err
    except http.client.IncompleteRead as err:
        raise RuntimeError(f"download of {url} is truncated: got {received + len(err.partial)} bytes, "
                           f"the server announced {total}. Try again; nothing was written to the cache.") from err
    except (urllib.error.URLError, socket.timeout, ConnectionError, http.client.HTTPException) as err:
        reason = getattr(err, "reason", err)
        raise RuntimeError(f"could not download {url}: {reason} (no network or host unreachable). "
                           f"Connect, or set VISIONATTN_OFFLINE=1 to use only cached files.") from err
    if total is not None and received != total:
        raise RuntimeError(f"download of {url} is truncated: got {received} bytes, the server announced "
                           f"{total}. Try again; nothing was written to the cache.")
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        raise RuntimeError(f"SHA-256 mismatch for {url}: got {actual}, expected {sha256}. The file is "
                           f"corrupt or the link now serves a different file; it was not kept.")


# --- model zoo manifest -----------------------------------------------------------------------

_SOURCES = ("official", "ours")


@dataclass(frozen=True)
class ZooEntry:
    """One set of weights in the model zoo (one item of a ``model_zoo/<family>.yaml``)."""

    name: str                      # zoo name, e.g. 'biformer_small.in1k'
    family: str
    model: str                     # create_model name of the architecture
    kwargs: Dict[str, Any]         # constructor kwargs of the architecture
    url: Optional[str]
    sha256: Optional[str]          # None: link dead / unknown hash; a user-supplied file is accepted
    source: str                    # 'official' (released by the authors) or 'ours' (trained here)
    converter: Optional[str]       # family whose converter reads the file; None for our format
    converter_kwargs: Dict[str, Any]
    filename: str                  # name of the file in the cache
    default: bool                  # the entry create_model(model, pretrained=True) uses
    published: Dict[str, Any]
    reproduced: Optional[Dict[str, Any]]
    notes: str = ""
    manifest: str = ""             # the YAML file it came from

    @property
    def cache_path(self) -> Path:
        return cache_dir() / self.filename


def zoo_dir() -> Path:
    """The manifest folder: ``$VISIONATTN_ZOO_DIR`` if set, else ``model_zoo/`` of the checkout."""
    env = os.environ.get("VISIONATTN_ZOO_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "model_zoo"


_MANIFEST: Dict[str, Dict[str, ZooEntry]] = {}  # zoo dir -> {entry name: entry}


def _parse_entry(item: Any, family: str, default_converter: Optional[str], where: str) -> ZooEntry:
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: each item of 'models' must be a mapping, got {item!r}")
    missing = [k for k in ("name", "architecture", "url", "sha256", "source", "metrics") if k not in item]
    if missing:
        raise ValueError(f"{where}: entry {item.get('name', '?')!r} lacks {missing} (schema: model_zoo/README.md)")
    name = item["name"]
    arch = item["architecture"]
    if isinstance(arch, str):
        model, kwargs = arch, {}
    elif isinstance(arch, Mapping) and "name" in arch:
        model, kwargs = arch["name"], dict(arch.get("kwargs") or {})
    else:
        raise ValueError(f"{where}: {name}: architecture must be a model name or {{name:, kwargs:}}, got {arch!r}")
    source = item["source"]
    if source not in _SOURCES:
        raise ValueError(f"{where}: {name}: source must be one of {_SOURCES}, got {source!r}")
    sha = item["sha256"]
    if sha is not None and (not isinstance(sha, str) or len(sha) != 64
                            or any(c not in "0123456789abcdef" for c in sha.lower())):
        raise ValueError(f"{where}: {name}: sha256 must be 64 hex digits or null, got {sha!r}")
    url = item["url"]
    if url is not None and not str(url).startswith(("http://", "https://")):
        raise ValueError(f"{where}: {name}: url must be http(s) or null, got {url!r}")
    filename = item.get("filename")
    if not filename:
        suffix = "".join(Path(urllib.parse.urlparse(url).path).suffixes[-2:]) if url else ".pth"
        filename = f"{name}{suffix or '.pth'}"
    converter = item.get("converter", default_converter if source == "official" else None)
    metrics = item["metrics"] or {}
    if "published" not in metrics:
        raise ValueError(f"{where}: {name}: metrics must have 'published' (null if none were published)")
    return ZooEntry(
        name=name, family=family, model=model, kwargs=kwargs, url=url,
        sha256=sha.lower() if sha else None, source=source, converter=converter,
        converter_kwargs=dict(item.get("converter_kwargs") or {}), filename=filename,
        default=bool(item.get("default", False)), published=dict(metrics.get("published") or {}),
        reproduced=dict(metrics["reproduced"]) if metrics.get("reproduced") else None,
        notes=str(item.get("notes") or ""), manifest=where,
    )


def load_manifest(directory: Optional[Union[str, Path]] = None) -> Dict[str, ZooEntry]:
    """Parse every ``*.yaml`` of the zoo folder into ``{entry name: ZooEntry}`` (cached per folder)."""
    import yaml

    directory = Path(directory) if directory is not None else zoo_dir()
    key = str(directory.resolve())
    if key in _MANIFEST:
        return _MANIFEST[key]
    entries: Dict[str, ZooEntry] = {}
    for path in sorted(directory.glob("*.yaml")):
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, Mapping) or "models" not in data:
            raise ValueError(f"{path}: a zoo manifest is a mapping with 'family' and 'models' (see model_zoo/README.md)")
        family = data.get("family") or path.stem
        for item in data["models"] or []:
            entry = _parse_entry(item, family, data.get("converter", family), str(path))
            if entry.name in entries:
                raise ValueError(f"{path}: zoo entry {entry.name!r} is already defined in {entries[entry.name].manifest}")
            entries[entry.name] = entry
    _MANIFEST[key] = entries
    return entries


def reload_manifest() -> None:
    """Forget the parsed manifests (after editing ``model_zoo/`` or changing ``VISIONATTN_ZOO_DIR``)."""
    _MANIFEST.clear()


def list_entries(pattern: str = "*", family: Optional[str] = None) -> List[ZooEntry]:
    """Zoo entries whose name matches the shell-style ``pattern``, optionally of one family."""
    import fnmatch

    return [e for n, e in sorted(load_manifest().items())
            if fnmatch.fnmatch(n, pattern) and (family is None or e.family == family)]


def get_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or the default entry of the architecture ``name``."""
    entries = load_manifest()
    if name in entries:
        return entries[name]
    for_arch = [e for e in entries.values() if e.model == name]
    if for_arch:
        defaults = [e for e in for_arch if e.default]
        return (defaults or for_arch)[0]
    import difflib

    close = difflib.get_close_matches(name, list(entries) + sorted({e.model for e in entries.values()}), n=5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise ValueError(f"the model zoo has no weights for {name!r}.{hint} "
                     f"`python tools/zoo.py list` shows every entry.")


def has_entry(name: str) -> bool:
    """Whether the model zoo has weights called ``name`` or for the architecture ``name``."""
    entries = load_manifest()
    return name in entries or any(e.model == name for e in entries.values())


def fetch_entry(entry: Union[str, ZooEntry], progress: bool = True, offline: Optional[bool] = None) -> Path:
    """Local path of the entry's verified file: from the cache, downloaded, or user-supplied.

    Entries with ``sha256: null`` (dead official link, or a hash nobody could compute) are never
    downloaded, since the download could not be verified; they accept a file the user put at
    ``entry.cache_path`` (or ``checkpoint=PATH``), and the error says where.
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    supply = (f"If you have the file (see notes: {entry.notes or 'none'}), put it at "
              f"{str(entry.cache_path)!r} or pass checkpoint=PATH to create_model.")
    if entry.url is None:
        if entry.cache_path.is_file():
            if entry.sha256 is None or file_sha256(entry.cache_path) == entry.sha256:
                return entry.cache_path
            raise RuntimeError(f"{entry.cache_path} does not match the SHA-256 of zoo entry {entry.name!r}")
        raise RuntimeError(f"zoo entry {entry.name!r} has no download link (the official one is dead). {supply}")
    if entry.sha256 is None:
        if entry.cache_path.is_file():
            return entry.cache_path  # user-supplied: visionattn never downloads an unhashed entry
        raise RuntimeError(f"zoo entry {entry.name!r} has no SHA-256 in the manifest, so visionattn does not "
                           f"download it: the file could not be verified. Download {entry.url} yourself, check "
                           f"it, and put it at {str(entry.cache_path)!r} or pass checkpoint=PATH to create_model.")
    return download(entry.url, entry.sha256, progress, filename=entry.filename, offline=offline)


def load_pretrained(model: nn.Module, name: Union[str, ZooEntry], progress: bool = True,
                    offline: Optional[bool] = None) -> nn.Module:
    """Fetch (verified, cached) and strictly load the zoo weights ``name`` into ``model``."""
    entry = get_entry(name) if isinstance(name, str) else name
    path = fetch_entry(entry, progress=progress, offline=offline)
    try:
        checkpoint = read_checkpoint(path)
    except RuntimeError as err:
        if entry.sha256 is not None:
            raise
        raise RuntimeError(f"{err}. Zoo entry {entry.name!r} has no SHA-256, so this may be an error page "
                           f"served by a dead link: delete {str(path)!r} and put the real file there, or "
                           f"pass checkpoint=PATH.") from err
    return load_checkpoint(model, checkpoint, family=entry.converter or entry.family, **entry.converter_kwargs)


# --- checkpoints into timm feature extractors --------------------------------------------------

def canonical_name(name: str) -> str:
    """Module name with timm's feature-wrapper renames undone (``stages_0`` -> ``stages.0``).

    timm's FeatureListNet joins nested Sequential names with ``_`` and FeatureGetterNet keeps the
    model under ``model.``; normalising both sides lets weights move between the full network and
    its feature-extractor form by name.
    """
    name = name[len("model."):] if name.startswith("model.") else name
    return name.replace("_", ".")


def copy_into_features(features: nn.Module, full: nn.Module) -> List[str]:
    """Copy the weights of ``full`` (a whole network) into ``features`` (its features_only form).

    Every tensor of ``features`` must find its counterpart with the same shape in ``full``, except
    those of modules ``full`` does not have at all: dense-only layers such as per-stage output norms
    (FFNet ``stage_norm``, BiFormer ``out_norm``), which keep their initial values. Anything else
    raises: a checkpoint that silently loads nothing is worse than an error. Returns the names of
    the tensors left at their initial values.
    """
    def split(key: str) -> Tuple[str, str]:  # (canonical module name, tensor name)
        module, _, leaf = key.rpartition(".")
        return canonical_name(module), leaf

    source = {split(k): v for k, v in full.state_dict().items()}
    full_modules = {canonical_name(n) for n, _ in full.named_modules()}
    target = features.state_dict()
    missing, bad_shape, kept = [], [], []
    for key, value in target.items():
        module, leaf = split(key)
        match = source.get((module, leaf))
        if match is None:
            (missing if module in full_modules else kept).append(key)
        elif match.shape != value.shape:
            bad_shape.append(f"{key}: {tuple(match.shape)} vs {tuple(value.shape)}")
        else:
            target[key] = match
    if missing or bad_shape or len(kept) == len(target):
        raise RuntimeError(
            f"the weights do not fit the feature extractor: {len(missing)} tensors without a counterpart "
            f"{missing[:5]}, shape mismatches {bad_shape[:5]}, {len(target) - len(kept)} of {len(target)} "
            f"tensors matched. Are the model kwargs the ones the checkpoint was trained with?")
    features.load_state_dict(target, strict=True)
    return kept
