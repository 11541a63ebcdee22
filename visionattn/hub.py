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
import dataclasses
import hashlib
import http.client
import os
import socket
import time
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

from .resources import data_dir
from .safe_pickle import mmengine_globals, numpy_globals
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
    """Non-tensor classes checkpoints pickle next to their weights (training args, numpy metrics,
    Lightning 1.x callback keys as :class:`LightningCallbackKey`, the MessageHub of checkpoints
    written by ``tools/train.py``), allowed by ``torch.load(weights_only=True)``. Nothing here can
    run code on load."""
    return [argparse.Namespace, *numpy_globals(), *mmengine_globals(),
            *((LightningCallbackKey, name) for name in _LIGHTNING_CALLBACKS)]


def read_checkpoint(source: Union[str, Path], map_location="cpu", trusted: bool = False) -> Mapping:
    """Load a checkpoint object from a local path or an http(s) URL (downloaded to the cache).

    Files are read with ``torch.load(weights_only=True)`` plus a small allowlist of harmless
    classes (:func:`_safe_globals`). ``trusted=True`` turns the pickle safety off (arbitrary code
    can run): only for files you trust that hold other classes; it is never done implicitly.
    safetensors files (by suffix or content) are read with safetensors.
    """
    source = str(source)
    if source.startswith(("http://", "https://")):
        path = download(source)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint file {str(path)!r} does not exist")
    with open(path, "rb") as f:
        head = f.read(512)
    try:
        if path.suffix == ".safetensors" or checkpoint_format(head) == "safetensors":
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
                f"visionattn.hub.read_checkpoint(path, trusted=True) (or --trust in visionattn-convert) "
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


_WRAPPER_PREFIXES = ("module.", "backbone.", "net.", "network.", "model.", "ema.", "module.backbone.", "module.net.")


@dataclass
class KeyDiff:
    """How a state dict differs from a model's: keys it lacks, keys the model lacks, tensors of another
    shape (key, file shape, model shape) and likely renames (file key, model key)."""

    missing: List[str]
    unexpected: List[str]
    shapes: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]]
    renamed: List[Tuple[str, str]]

    def __bool__(self) -> bool:
        return bool(self.missing or self.unexpected or self.shapes)

    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.shapes)


def diff_state_dict(state_dict: Mapping[str, Any], model_state: Mapping[str, torch.Tensor]) -> KeyDiff:
    """Compare ``state_dict`` (a file's tensors) with ``model_state`` (``model.state_dict()``)."""
    import difflib

    missing = [k for k in model_state if k not in state_dict]
    unexpected = [k for k in state_dict if k not in model_state]
    shapes = [(k, tuple(getattr(v, "shape", ())), tuple(model_state[k].shape)) for k, v in state_dict.items()
              if k in model_state and tuple(getattr(v, "shape", ())) != tuple(model_state[k].shape)]
    renamed = []
    if len(missing) <= 50 and len(unexpected) <= 50:
        for key in unexpected:
            same_shape = [m for m in missing if tuple(model_state[m].shape) == tuple(getattr(state_dict[key], "shape", ()))]
            close = difflib.get_close_matches(key, same_shape, n=1, cutoff=0.75)
            if close:
                renamed.append((key, close[0]))
    return KeyDiff(missing, unexpected, shapes, renamed)


def _listing(keys: List[str], shown: int = 5) -> str:
    return f"{len(keys)} [{', '.join(keys[:shown])}{', ...' if len(keys) > shown else ''}]"


def describe_mismatch(diff: KeyDiff, model: nn.Module, family: Optional[str], what: str) -> str:
    """One sentence in the library's words: which keys are missing/unexpected (first few, with
    counts), which tensors have another shape (file vs model), and the likely renames."""
    parts = []
    if diff.missing:
        parts.append(f"missing keys {_listing(diff.missing)}")
    if diff.unexpected:
        parts.append(f"unexpected keys {_listing(diff.unexpected)}")
    if diff.shapes:
        shown = ", ".join(f"{k}: {file} in the file vs {ours} in the model" for k, file, ours in diff.shapes[:5])
        parts.append(f"{len(diff.shapes)} tensors of another shape [{shown}{', ...' if len(diff.shapes) > 5 else ''}]")
    hint = ""
    if diff.renamed:
        hint = " Renamed? " + ", ".join(f"{a!r} looks like {b!r}" for a, b in diff.renamed[:5]) + "."
    elif diff.shapes and not (diff.missing or diff.unexpected):
        hint = " Are the model kwargs (variant, num_classes, in_chans...) the ones the checkpoint was trained with?"
    fam = f" (family {family!r})" if family else ""
    return f"{what} does not fit {type(model).__name__}{fam}: {'; '.join(parts)}.{hint}"


def _near_native(checkpoint: Mapping, model_state: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Any]]:
    """The tensors of ``checkpoint`` when it is the library's own format with a few keys off: at least
    half of the model's keys are present under their own names (after a wrapper prefix). None otherwise."""
    try:
        state_dict = extract_state_dict(checkpoint)
    except RuntimeError:
        return None
    best, best_overlap = None, 0
    for prefix in ("",) + _WRAPPER_PREFIXES:
        stripped = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)} if prefix else state_dict
        overlap = sum(1 for k in stripped if k in model_state)
        if overlap > best_overlap:
            best, best_overlap = stripped, overlap
    return best if model_state and best_overlap * 2 >= len(model_state) else None


_FEW_KEYS = 4  # at most this many keys off the model's own: a damaged file of the library's format


def load_checkpoint(model: nn.Module, source: Union[str, Path, Mapping], family: Optional[str] = None,
                    strict: bool = True, **kwargs) -> nn.Module:
    """Load weights from a path, URL or already-loaded checkpoint into ``model`` (strict by default).

    A file that does not fit raises a RuntimeError naming the missing and unexpected keys (first few,
    with counts), the tensors of another shape (both shapes) and likely renames. A file in the
    library's own format with a few keys off is reported as such (not handed to the family's
    converter as if it were an official release). ``strict=False`` loads the keys that fit and
    still refuses tensors of another shape.
    """
    checkpoint = source if isinstance(source, Mapping) else read_checkpoint(source)
    where = "checkpoint" if isinstance(source, Mapping) else f"checkpoint {str(source)!r}"
    model_state = model.state_dict()
    try:
        state_dict, problem = convert_checkpoint(checkpoint, model, family, **kwargs), None
    except KeyError as err:  # a converter indexing an official key the file lacks
        state_dict = None
        problem = RuntimeError(f"{where} looks like the official {family} format but lacks the key {err}: it is "
                               f"damaged or of another release")
        problem.__cause__ = err
    except RuntimeError as err:
        state_dict, problem = None, err
    diff = diff_state_dict(state_dict, model_state) if state_dict is not None else None
    if problem is not None or (diff and (strict or diff.shapes)):
        native = _near_native(checkpoint, model_state) if not kwargs else None
        if native is not None:
            native_diff = diff_state_dict(native, model_state)
            # a few keys off our own layout: name them (a converter that raised would describe the file as an
            # official release); many keys off: the converter's message (e.g. "a file of another variant") says more
            few = native_diff.size() <= _FEW_KEYS or (diff is not None and native_diff.size() <= diff.size())
            if native_diff and few:
                raise RuntimeError(describe_mismatch(native_diff, model, family, f"{where} (in visionattn's format)"))
        if problem is not None:
            raise problem
        raise RuntimeError(describe_mismatch(diff, model, family, where))
    model.load_state_dict(state_dict, strict=strict)
    return model


# --- downloads and cache ----------------------------------------------------------------------

_CHUNK = 1 << 20


class ChecksumError(RuntimeError):
    """A file's SHA-256 (``actual``) is not the one the manifest or the pin file expects; the message
    names both."""

    def __init__(self, message: str, actual: Optional[str] = None, path: Optional[Path] = None):
        super().__init__(message)
        self.actual, self.path = actual, path  # path: the checked file, None when a download was refused


def cache_dir() -> Path:
    """Where downloads are kept: ``$VISIONATTN_HOME/checkpoints`` if set, else torch's hub cache
    ``$TORCH_HOME/hub/checkpoints`` (``~/.cache/torch/hub/checkpoints`` by default). Hugging Face
    files go to its ``huggingface/`` subfolder (see :func:`hf_cache_dir`), the pins to
    :func:`lock_path`."""
    home = os.environ.get("VISIONATTN_HOME")
    if home:
        return Path(home).expanduser() / "checkpoints"
    return Path(torch.hub.get_dir()) / "checkpoints"


def is_offline(offline: Optional[bool] = None) -> bool:
    """``offline`` if given, else whether ``VISIONATTN_OFFLINE`` (or Hugging Face's ``HF_HUB_OFFLINE``)
    is set to 1/true/yes."""
    if offline is not None:
        return offline
    return any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
               for var in ("VISIONATTN_OFFLINE", "HF_HUB_OFFLINE"))


def download_timeout() -> float:
    """Seconds a download waits for the server to connect or send more bytes before giving up:
    ``$VISIONATTN_DOWNLOAD_TIMEOUT``, default 60."""
    value = os.environ.get("VISIONATTN_DOWNLOAD_TIMEOUT", "").strip()
    try:
        return float(value) if value else 60.0
    except ValueError:
        raise ValueError(f"VISIONATTN_DOWNLOAD_TIMEOUT must be a number of seconds, got {value!r}") from None


def download_deadline() -> float:
    """Seconds a whole download may take, however steadily the server trickles bytes:
    ``$VISIONATTN_DOWNLOAD_DEADLINE``, default 3600 (a 1 GB file at 0.3 MB/s)."""
    value = os.environ.get("VISIONATTN_DOWNLOAD_DEADLINE", "").strip()
    try:
        seconds = float(value) if value else 3600.0
    except ValueError:
        raise ValueError(f"VISIONATTN_DOWNLOAD_DEADLINE must be a number of seconds, got {value!r}") from None
    if not seconds > 0:
        raise ValueError(f"VISIONATTN_DOWNLOAD_DEADLINE must be > 0 seconds, got {value!r}")
    return seconds


def file_sha256(path: Union[str, Path]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def url_cache_name(url: str) -> str:
    """Cache file name of a download that is not a zoo entry: the URL's file name with 8 hex digits of
    the URL's SHA-256 before the suffix (``r10-1a2b3c4d.pth``), so URLs that end alike (OneDrive's
    ``.../root/content``) never share a cache file."""
    base = os.path.basename(urllib.parse.urlparse(url).path.rstrip("/")) or "download"
    stem, dot, suffix = base.partition(".")
    return f"{stem}-{hashlib.sha256(url.encode()).hexdigest()[:8]}{dot}{suffix}"


def checkpoint_format(head: bytes) -> Optional[str]:
    """The container format a file starting with ``head`` (its first bytes) is in: 'zip' (torch.save),
    'pickle' (legacy torch.save), 'tar' (torch.save before 1.6), 'safetensors', or None."""
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head[257:262] == b"ustar":
        return "tar"
    if len(head) >= 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000:
        return "safetensors"
    return None


def _not_a_checkpoint(what: str, head: bytes) -> str:
    text = head[:512].lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<head", b"<body")) or b"<html" in text:
        kind = "an HTML page (a sign-in, error or 'file moved' page, not the file)"
    elif text.startswith((b"{", b"[")):
        kind = "JSON (an error message from the server, not the file)"
    else:
        kind = f"no checkpoint format (it starts with {head[:16]!r})"
    return f"{what} is {kind}"


def download(url: str, sha256: Optional[str] = None, progress: bool = True, *,
             filename: Optional[str] = None, offline: Optional[bool] = None,
             timeout: Optional[float] = None, deadline: Optional[float] = None) -> Path:
    """Download ``url`` into :func:`cache_dir` and return the local path.

    A cached file is reused (after checking ``sha256`` when given). A new download streams into a
    temporary file in the cache directory, is checked for truncation (Content-Length), for being a
    checkpoint at all (not an HTML or JSON error page) and against ``sha256``, and only then renamed
    into place, so no half or wrong file is ever left or loaded. ``filename`` names the cache file
    (default :func:`url_cache_name`). ``timeout`` (default :func:`download_timeout`) bounds each
    wait for the server, ``deadline`` (default :func:`download_deadline`) the whole download (checked
    after every read, so a server sending a byte now and then is given up on too). In offline mode
    (see :func:`is_offline`) only the cache is used.
    """
    return _download(url, sha256, progress, filename=filename, offline=offline, timeout=timeout,
                     deadline=deadline)[0]


def _download(url: str, sha256: Optional[str], progress: bool, *, filename: Optional[str],
              offline: Optional[bool], timeout: Optional[float],
              deadline: Optional[float] = None) -> Tuple[Path, Optional[str]]:
    """:func:`download`, also returning the SHA-256 when it was computed (None for an unchecked cache hit)."""
    dest = cache_dir() / (filename or url_cache_name(url))
    if sha256 is not None:
        sha256 = sha256.lower()
    if dest.is_file():
        if sha256 is None:
            return dest, None
        actual = file_sha256(dest)
        if actual == sha256:
            return dest, actual
        if is_offline(offline):
            raise ChecksumError(
                f"cached file {str(dest)!r} has SHA-256 {actual}, expected {sha256}; it is corrupt or a "
                f"different file. Delete it and download again with the network on (offline mode is set).", actual, dest)
        warnings.warn(f"cached {dest} has SHA-256 {actual}, expected {sha256}: downloading it again")
    if is_offline(offline):
        raise RuntimeError(
            f"offline mode (VISIONATTN_OFFLINE=1 or offline=True): {url} is not in the cache at "
            f"{str(dest)!r}. Download it once with the network on (visionattn-zoo download NAME) "
            f"or copy the file there.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        actual = _fetch(url, tmp, sha256, progress, download_timeout() if timeout is None else timeout,
                        download_deadline() if deadline is None else deadline)
        os.replace(tmp, dest)  # atomic on one file system: readers see no file or the whole file
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest, actual


def _fetch(url: str, tmp: Path, sha256: Optional[str], progress: bool, timeout: float,
           deadline: float = float("inf")) -> str:
    """Stream ``url`` into ``tmp`` and return its SHA-256; raise RuntimeError on HTTP/network errors,
    a stalled server, a download past ``deadline`` seconds, truncation, a page that is not a
    checkpoint, or a hash other than ``sha256``."""
    from tqdm import tqdm

    if not deadline > 0:
        raise ValueError(f"download deadline must be > 0 seconds, got {deadline}")
    end = time.monotonic() + deadline

    digest = hashlib.sha256()
    received, total, head = 0, None, b""
    request = urllib.request.Request(url, headers={"User-Agent": "visionattn"})
    try:
        with urllib.request.urlopen(request, timeout=min(timeout, deadline)) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            where = url if response.geturl() == url else f"{url} (redirected to {response.geturl()})"
            if response.headers.get_content_type() in ("text/html", "application/xhtml+xml", "application/json"):
                head = response.read(512)
                raise RuntimeError(f"download of {where} failed: the server sent "
                                   f"{response.headers.get_content_type()}, and "
                                   f"{_not_a_checkpoint('it', head)}. The link is dead or needs a "
                                   f"browser: download the file by hand and pass its path.")
            with open(tmp, "wb") as f, tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                                            desc=tmp.name[1:].rsplit(".", 2)[0], disable=not progress) as bar:
                pending, checked = b"", False  # the first 512 bytes are checked before anything is written
                while True:
                    chunk = response.read1(_CHUNK)  # what has arrived (up to _CHUNK): the deadline is checked often
                    if chunk and time.monotonic() > end:
                        raise RuntimeError(f"download of {where} took longer than its {deadline:g} s deadline "
                                           f"({received + len(pending) + len(chunk)} bytes of "
                                           f"{total or 'an unknown size'} received). Nothing was cached. Try again "
                                           f"later, or allow longer with VISIONATTN_DOWNLOAD_DEADLINE=SECONDS.")
                    if not checked:
                        pending += chunk
                        if chunk and len(pending) < 512:
                            continue
                        checked, chunk, head, pending = True, pending, pending[:512], b""
                        if head and checkpoint_format(head) is None:
                            raise RuntimeError(f"download of {where} failed: {_not_a_checkpoint('the file', head)}. "
                                               f"Download it by hand and pass its path; nothing was cached.")
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
    except (TimeoutError, socket.timeout) as err:
        raise RuntimeError(_stalled(url, timeout, received)) from err
    except urllib.error.URLError as err:
        if isinstance(err.reason, (TimeoutError, socket.timeout)):
            raise RuntimeError(_stalled(url, timeout, received)) from err
        raise RuntimeError(f"could not download {url}: {err.reason} (no network or host unreachable). "
                           f"Connect, or set VISIONATTN_OFFLINE=1 to use only cached files.") from err
    except (ConnectionError, http.client.HTTPException) as err:
        raise RuntimeError(f"could not download {url}: {err} (the connection failed). Try again, or set "
                           f"VISIONATTN_OFFLINE=1 to use only cached files.") from err
    if total is not None and received != total:
        raise RuntimeError(f"download of {url} is truncated: got {received} bytes, the server announced "
                           f"{total}. Try again; nothing was written to the cache.")
    if received == 0:
        raise RuntimeError(f"download of {url} is empty (0 bytes). Check the URL; nothing was cached.")
    actual = digest.hexdigest()
    if sha256 is not None and actual != sha256:
        raise ChecksumError(f"SHA-256 mismatch for {url}: got {actual}, expected {sha256}. The file is "
                            f"corrupt or the link now serves a different file; it was not kept.", actual)
    return actual


def _stalled(url: str, timeout: float, received: int) -> str:
    return (f"download of {url} stalled: no data from the server for {timeout:g} s "
            f"({received} bytes received). Nothing was cached. Try again later, or allow longer waits "
            f"with VISIONATTN_DOWNLOAD_TIMEOUT=SECONDS.")


# --- pins: hashes of zoo files the manifest has none for ---------------------------------------

LOCK_NAME = "zoo-lock.json"


class ZooPinWarning(UserWarning):
    """A zoo file without a SHA-256 in the manifest was downloaded for the first time and pinned."""


def lock_path() -> Path:
    """The pin file beside the checkpoints: ``cache_dir() / 'zoo-lock.json'``. It maps a zoo file's
    source (its URL) to the SHA-256 (and Hugging Face commit) it had when it was first downloaded."""
    return cache_dir() / LOCK_NAME


def read_pins() -> Dict[str, Dict[str, Any]]:
    """``{source URL: {'sha256', 'revision', 'entries', 'file', 'pinned'}}`` from :func:`lock_path`."""
    import json

    path = lock_path()
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
        pins = data["pins"]
        if not isinstance(pins, dict):
            raise ValueError("'pins' is not a mapping")
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(f"the pin file {str(path)!r} is damaged ({type(err).__name__}: {err}). Delete it: "
                           f"every unhashed zoo file is pinned again when it is next loaded.") from err
    return pins


def _update_pins(change) -> None:
    """Apply ``change(pins)`` to the pin file under a lock, written atomically."""
    import json

    from filelock import FileLock

    path = lock_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_name(f".{path.name}.lock")), timeout=120):
        pins = read_pins()
        change(pins)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        tmp.write_text(json.dumps({"version": 1, "pins": pins}, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, path)


def pin_key(entry: "ZooEntry") -> str:
    """What a pin is keyed by: the entry's URL (entries sharing a URL share the pin), or its cache
    file for an entry without a link."""
    return entry.url or f"file:{entry.filename}"


def get_pin(entry: "ZooEntry") -> Optional[Dict[str, Any]]:
    return read_pins().get(pin_key(entry))


def _pin(entry: "ZooEntry", sha256: str, path: Path, revision: Optional[str] = None) -> None:
    import datetime

    key = pin_key(entry)

    def change(pins):
        record = pins.get(key) or {"entries": []}
        record.update(sha256=sha256, revision=revision, file=str(path),
                      pinned=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        record["entries"] = sorted(set(record.get("entries", [])) | {entry.name})
        pins[key] = record

    _update_pins(change)
    fields = {"sha256": sha256 if entry.sha256 is None else None,
              "revision": revision if entry.revision is None else None}
    missing = " and ".join({"sha256": "SHA-256", "revision": "revision"}[k] for k, v in fields.items() if v)
    record = " and ".join(f"{k}: {v}" for k, v in fields.items() if v)
    what = f"SHA-256 {sha256}" + (f" at commit {revision}" if revision else "")
    warnings.warn(
        f"zoo entry {entry.name!r} has no {missing} in its manifest: the file was pinned to {what} in "
        f"{lock_path()}, and every later load is checked against it. To record it for everyone, add "
        f"`{record}` to the entry in {entry.manifest or 'its model_zoo YAML'} "
        f"(visionattn-zoo pin {entry.name} --write does it).", ZooPinWarning, stacklevel=4)


def unpin(entry: Union[str, "ZooEntry"]) -> bool:
    """Forget the pin of ``entry`` (after its publisher replaced the file on purpose); True if one existed."""
    entry = get_entry(entry) if isinstance(entry, str) else entry
    key, found = pin_key(entry), []

    def change(pins):
        found.append(pins.pop(key, None))

    _update_pins(change)
    return found[0] is not None


def _pin_mismatch(entry: "ZooEntry", pin: Dict[str, Any], actual: str, where: str) -> ChecksumError:
    return ChecksumError(
        f"zoo entry {entry.name!r}: {where} has SHA-256 {actual}, but the file was pinned to SHA-256 "
        f"{pin['sha256']} when it was first downloaded ({pin.get('pinned', '?')}, {lock_path()}). The file "
        f"changed; it is refused. If its publisher replaced it on purpose, check the new file, then run "
        f"`visionattn-zoo unpin {entry.name}` and load again (the new hash is pinned).", actual)


# --- Hugging Face Hub files -------------------------------------------------------------------

@dataclass(frozen=True)
class HfFile:
    """A file of a Hugging Face Hub repository, read from a ``.../resolve/REF/FILE`` URL."""

    repo_id: str
    filename: str
    ref: str                       # the branch, tag or commit in the URL
    repo_type: str = "model"


_HF_HOSTS = ("huggingface.co", "hf.co")


def parse_hf_url(url: Optional[str]) -> Optional[HfFile]:
    """``https://huggingface.co/ORG/REPO/resolve/REF/FILE`` -> :class:`HfFile` (None for other URLs)."""
    if not url:
        return None
    parsed = urllib.parse.urlparse(url)
    if parsed.hostname not in _HF_HOSTS:
        return None
    parts = [urllib.parse.unquote(p) for p in parsed.path.strip("/").split("/")]
    repo_type = "model"
    if parts and parts[0] in ("datasets", "spaces"):
        repo_type, parts = parts[0][:-1], parts[1:]
    if "resolve" not in parts or parts.index("resolve") == 0 or len(parts) < parts.index("resolve") + 3:
        raise ValueError(f"Hugging Face URL {url!r} is not of the form https://huggingface.co/ORG/REPO/resolve/REF/FILE")
    i = parts.index("resolve")
    return HfFile(repo_id="/".join(parts[:i]), filename="/".join(parts[i + 2:]), ref=parts[i + 1], repo_type=repo_type)


def hf_cache_dir() -> Path:
    """Hugging Face Hub files of the zoo live in the Hub's own cache layout under ``cache_dir()/huggingface``."""
    return cache_dir() / "huggingface"


def _hf_cached(entry: "ZooEntry") -> Optional[Path]:
    """The Hub cache's copy of ``entry`` at its pinned revision, if there is one (no network)."""
    from huggingface_hub import try_to_load_from_cache

    hf = entry.hf
    pin = get_pin(entry) or {}
    found = try_to_load_from_cache(hf.repo_id, hf.filename, cache_dir=str(hf_cache_dir()),
                                   revision=entry.revision or pin.get("revision") or hf.ref, repo_type=hf.repo_type)
    return Path(found) if isinstance(found, str) else None


def _fetch_hf(entry: "ZooEntry", offline: Optional[bool]) -> Path:
    """The entry's file through ``huggingface_hub.hf_hub_download`` (its cache, offline mode and
    resumable downloads) at a pinned revision, checked against the manifest's SHA-256 or the pin."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    hf, pin = entry.hf, get_pin(entry) or {}
    revision = entry.revision or pin.get("revision") or hf.ref
    what = f"{hf.filename!r} of Hugging Face repository {hf.repo_id!r} at revision {revision!r} (zoo entry {entry.name!r})"
    offline = is_offline(offline)
    try:
        path = Path(hf_hub_download(hf.repo_id, hf.filename, repo_type=hf.repo_type, revision=revision,
                                    cache_dir=str(hf_cache_dir()), local_files_only=offline,
                                    endpoint=os.environ.get("HF_ENDPOINT") or None, library_name="visionattn"))
    except LocalEntryNotFoundError as err:
        if offline:
            raise RuntimeError(f"offline mode (VISIONATTN_OFFLINE=1, HF_HUB_OFFLINE=1 or offline=True): {what} "
                               f"is not in the cache {str(hf_cache_dir())!r}. Download it once with the network "
                               f"on (visionattn-zoo download {entry.name}).") from err
        if not isinstance(err.__cause__, (HfHubHTTPError, EntryNotFoundError)):
            raise RuntimeError(f"could not download {what}: {_first_line(err)} (no network or the Hub is "
                               f"unreachable). Connect, or set VISIONATTN_OFFLINE=1 to use only cached files.") from err
        refused = err.__cause__  # the Hub answered, with an error (hf_hub_download wraps a missing file so)
    except (HfHubHTTPError, EntryNotFoundError) as err:
        refused = err
    except (OSError, ValueError) as err:
        raise RuntimeError(f"could not download {what}: {type(err).__name__}: {_first_line(err)}") from err
    else:
        refused = None
    if refused is not None:
        raise RuntimeError(f"the Hugging Face Hub refused {what}: {_first_line(refused)}. Check the entry's URL "
                           f"and revision in {entry.manifest or 'its manifest'}.") from refused
    actual = file_sha256(path)
    expected = entry.sha256 or pin.get("sha256")
    if expected is not None and actual != expected:
        if entry.sha256 is None:
            raise _pin_mismatch(entry, pin, actual, f"{what} ({path})")
        raise ChecksumError(f"{what} ({path}) has SHA-256 {actual}, expected {expected} (manifest). The "
                            f"file is corrupt or the repository changed; it is refused.", actual)
    if not pin and (entry.sha256 is None or entry.revision is None):  # first download: pin hash and commit
        commit = _snapshot_commit(path, hf.filename)
        with open(path, "rb") as f:
            head = f.read(512)
        if checkpoint_format(head) is None:
            raise RuntimeError(f"{what} ({path}): {_not_a_checkpoint('the file', head)}; it was not pinned.")
        _pin(entry, actual, path, revision=commit)
    return path


def _snapshot_commit(path: Path, filename: str) -> Optional[str]:
    """The commit of a Hub cache path ``.../snapshots/<commit>/<filename>``."""
    parts = path.parts
    i = len(parts) - len(Path(filename).parts) - 1
    return parts[i] if i > 0 and parts[i - 1] == "snapshots" else None


def _first_line(err: BaseException) -> str:
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


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
    revision: Optional[str] = None  # Hugging Face files: the commit to download (None: pinned on first download)
    license: Optional[str] = None  # licence of the release the file comes from

    @property
    def cache_path(self) -> Path:
        """Where a file downloaded from ``url`` is cached (Hugging Face files: see :meth:`cached_file`)."""
        return cache_dir() / self.filename

    @property
    def hf(self) -> Optional[HfFile]:
        """The Hugging Face Hub file behind ``url``, or None for a plain http(s) download."""
        return parse_hf_url(self.url)

    def cached_file(self) -> Optional[Path]:
        """The local copy of this entry's file, if there is one (never touches the network or checks it)."""
        if self.hf is not None:
            return _hf_cached(self)
        return self.cache_path if self.cache_path.is_file() else None


def zoo_dir() -> Path:
    """The manifest folder: ``$VISIONATTN_ZOO_DIR`` if set, else the ``model_zoo/`` shipped with the
    package (the checkout's top-level ``model_zoo/`` when running from a clone)."""
    env = os.environ.get("VISIONATTN_ZOO_DIR")
    return Path(env) if env else data_dir("model_zoo")


_MANIFEST: Dict[str, Dict[str, ZooEntry]] = {}  # zoo dir -> {entry name: entry}


def _parse_entry(item: Any, family: str, default_converter: Optional[str], where: str,
                 default_license: Optional[str] = None) -> ZooEntry:
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
    if sha is not None and not _is_hex(sha, 64):
        raise ValueError(f"{where}: {name}: sha256 must be 64 hex digits or null, got {sha!r}")
    url = item["url"]
    if url is not None and not str(url).startswith(("http://", "https://")):
        raise ValueError(f"{where}: {name}: url must be http(s) or null, got {url!r}")
    try:
        hf = parse_hf_url(url)
    except ValueError as err:
        raise ValueError(f"{where}: {name}: {err}") from None
    revision = item.get("revision")
    if revision is not None and (hf is None or not _is_hex(revision, 40)):
        raise ValueError(f"{where}: {name}: revision is the 40-hex commit of a Hugging Face file "
                         f"(the URL must be https://huggingface.co/.../resolve/...), got {revision!r}")
    filename = item.get("filename")
    if not filename:  # named after the entry, never after the URL (OneDrive URLs all end in 'content')
        suffixes = Path(urllib.parse.urlparse(url).path).suffixes[-2:] if url else []
        suffix = "".join(x for x in suffixes if x.lower() in _CHECKPOINT_SUFFIXES)
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
        revision=revision.lower() if revision else None, license=item.get("license", default_license),
    )


_CHECKPOINT_SUFFIXES = (".pth", ".pt", ".tar", ".ckpt", ".bin", ".safetensors", ".pkl")


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value.lower())


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
            entry = _parse_entry(item, family, data.get("converter", family), str(path), data.get("license"))
            if entry.name in entries:
                raise ValueError(f"{path}: zoo entry {entry.name!r} is already defined in {entries[entry.name].manifest}")
            entries[entry.name] = entry
    by_file: Dict[str, ZooEntry] = {}
    for entry in entries.values():  # one cache file, one source: entries share a file only if they share the URL
        other = by_file.setdefault(entry.filename, entry)
        if other.url != entry.url and entry.hf is None:
            raise ValueError(f"{entry.manifest}: zoo entries {other.name!r} and {entry.name!r} would share the cache "
                             f"file {entry.filename!r} but have different URLs: give one another filename")
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
                     f"`visionattn-zoo list` shows every entry.")


def has_entry(name: str) -> bool:
    """Whether the model zoo has weights called ``name`` or for the architecture ``name``."""
    entries = load_manifest()
    return name in entries or any(e.model == name for e in entries.values())


def fetch_entry(entry: Union[str, ZooEntry], progress: bool = True, offline: Optional[bool] = None) -> Path:
    """Local path of the entry's verified file: from the cache, downloaded, or user-supplied.

    The file is checked against the manifest's SHA-256. An entry without one is downloaded anyway;
    the first file seen (downloaded, or put at ``entry.cache_path`` by the user) is pinned in
    :func:`lock_path` with a :class:`ZooPinWarning`, and every later load must match the pin
    (a changed file is refused, naming both hashes). Hugging Face files go through
    ``huggingface_hub`` at a pinned revision (:func:`_fetch_hf`).
    """
    entry = get_entry(entry) if isinstance(entry, str) else entry
    if entry.hf is not None:
        return _fetch_hf(entry, offline)
    pin = None if entry.sha256 else get_pin(entry)
    expected = entry.sha256 or (pin or {}).get("sha256")
    if entry.url is None:
        path = entry.cache_path
        if not path.is_file():
            raise RuntimeError(
                f"zoo entry {entry.name!r} has no download link (the official one is dead). If you have the "
                f"file (see notes: {entry.notes or 'none'}), put it at {str(path)!r} or pass checkpoint=PATH "
                f"to create_model.")
        actual = file_sha256(path)
        if expected is not None and actual != expected:
            if pin is not None:
                raise _pin_mismatch(entry, pin, actual, str(path))
            raise ChecksumError(f"{path} has SHA-256 {actual}, but zoo entry {entry.name!r} expects {expected}: "
                                f"it is not the released file.", actual)
    else:
        try:
            path, actual = _download(entry.url, expected, progress, filename=entry.filename, offline=offline,
                                     timeout=None)
        except ChecksumError as err:
            if pin is None:
                raise
            where = f"the cached file {str(err.path)!r}" if err.path else f"the file {entry.url} serves now"
            raise _pin_mismatch(entry, pin, err.actual, where) from err
        except RuntimeError as err:
            raise RuntimeError(f"zoo entry {entry.name!r}: {err} If you have the file (see notes: "
                               f"{entry.notes or 'none'}), put it at {str(entry.cache_path)!r} or pass "
                               f"checkpoint=PATH to create_model.") from err
    if expected is None:  # first sight of this file: pin it (a user-supplied copy is checked to be a checkpoint)
        with open(path, "rb") as f:
            head = f.read(512)
        if checkpoint_format(head) is None:
            raise RuntimeError(f"{str(path)!r} (zoo entry {entry.name!r}): {_not_a_checkpoint('the file', head)}. "
                               f"Delete it and put the real file there, or pass checkpoint=PATH.")
        _pin(entry, actual or file_sha256(path), path)
    return path


def load_pretrained(model: nn.Module, name: Union[str, ZooEntry], progress: bool = True,
                    offline: Optional[bool] = None) -> nn.Module:
    """Fetch (verified, cached) and strictly load the zoo weights ``name`` into ``model``."""
    entry = get_entry(name) if isinstance(name, str) else name
    checkpoint = read_checkpoint(fetch_entry(entry, progress=progress, offline=offline))
    return load_checkpoint(model, checkpoint, family=entry.converter or entry.family, **entry.converter_kwargs)


# --- timm models whose pretrained weights come from the zoo -------------------------------------

def build_timm_model(model_cls, variant: str, pretrained: bool = False, *, family: str, **kwargs) -> nn.Module:
    """timm's ``build_model_with_cfg`` for a model whose pretrained weights live in the model zoo.

    ``timm.create_model(NAME, pretrained=True)`` (and so ``visionattn.create_model(NAME,
    pretrained=True)``) reaches here: the pretrained tag ``ARCH.TAG`` names the zoo entry of the
    same name, which :func:`fetch_entry` downloads, verifies or pins, and caches under the entry's
    own name; the entry's converter maps it to the model's keys. timm's own loader then does what it
    does for every model (adapting ``in_chans``, dropping the classifier when ``num_classes``
    differs, wrapping ``features_only``), so the weights are exactly those of
    :func:`load_pretrained`. A ``pretrained_cfg_overlay=dict(file=PATH)`` loads a local file through
    the same converter. The load is strict: every tensor but the classifier a new ``num_classes``
    replaces must be in the file with its shape.
    """
    from timm.models import build_model_with_cfg, resolve_pretrained_cfg

    if not pretrained:
        return build_model_with_cfg(model_cls, variant, False, **kwargs)
    cfg = resolve_pretrained_cfg(variant, kwargs.pop("pretrained_cfg", None), kwargs.pop("pretrained_cfg_overlay", None))
    if cfg.state_dict is not None:
        source, converter, converter_kwargs, where = cfg.state_dict, family, {}, "the state dict passed in pretrained_cfg"
    elif cfg.file:
        source, converter, converter_kwargs, where = Path(cfg.file), family, {}, str(cfg.file)
    else:
        name = f"{cfg.architecture}.{cfg.tag}"
        if not has_entry(name) or get_entry(name).name != name:
            raise RuntimeError(f"timm pretrained tag {name!r} has no model-zoo entry: `visionattn-zoo list "
                               f"{cfg.architecture}*` shows the weights there are, or pass "
                               f"pretrained_cfg_overlay=dict(file=PATH).")
        entry = get_entry(name)
        source, converter, converter_kwargs, where = entry, entry.converter or entry.family, entry.converter_kwargs, name
    features = bool(kwargs.get("features_only"))
    loaded: Dict[str, Any] = {}

    def zoo_weights(_placeholder, model: nn.Module) -> Dict[str, torch.Tensor]:
        """timm's pretrained filter: the zoo file, read, converted and checked against the model."""
        if isinstance(source, ZooEntry):
            path = fetch_entry(source)
            checkpoint = read_checkpoint(path)
        else:
            path, checkpoint = source, (read_checkpoint(source) if isinstance(source, Path) else source)
        loaded["file"] = str(path) if isinstance(path, Path) else None
        state_dict = convert_checkpoint(checkpoint, model, converter, **converter_kwargs)
        _check_fits(state_dict, model, cfg, features, kwargs.get("in_chans", 3), where)
        return state_dict

    # timm reads a pretrained state dict from the cfg; it gets a placeholder that names the source,
    # and zoo_weights (its filter) supplies the real tensors, so no cfg ever holds the weights.
    placeholder = dataclasses.replace(cfg, state_dict={"visionattn.hub": where}, file=None)
    model = build_model_with_cfg(model_cls, variant, True, pretrained_cfg=placeholder.to_dict(),
                                 pretrained_filter_fn=zoo_weights, pretrained_strict=True, **kwargs)
    for module in (model, getattr(model, "model", None)):  # the features wrapper keeps a copy of the cfg
        pretrained_cfg = getattr(module, "pretrained_cfg", None)
        if isinstance(pretrained_cfg, dict):
            pretrained_cfg.pop("state_dict", None)
            pretrained_cfg.update(file=loaded.get("file"), source="visionattn-zoo")
    return model


def _check_fits(state_dict: Mapping[str, torch.Tensor], model: nn.Module, cfg, features: bool, in_chans: int,
                where: str) -> None:
    """Strictness of the timm path: ``state_dict`` has every tensor of ``model`` with its shape, except
    what timm adapts itself (the classifier for a new ``num_classes`` or a features model, the first
    conv for a new ``in_chans``)."""
    def names(value):
        return (value,) if isinstance(value, str) else tuple(value or ())

    adapted = set()
    if features or getattr(model, "num_classes", cfg.num_classes) != cfg.num_classes:
        adapted |= {f"{c}.{leaf}" for c in names(cfg.classifier) for leaf in ("weight", "bias")}
    if in_chans != (cfg.input_size or (3,))[0]:
        adapted |= {f"{c}.weight" for c in names(cfg.first_conv)}
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict and k not in adapted]
    unexpected = [k for k in state_dict if k not in own and k not in adapted]
    shapes = [f"{k}: {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state_dict and k not in adapted and tuple(state_dict[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        raise RuntimeError(f"the weights of {where} do not fit {type(model).__name__}: missing keys {missing[:8]}, "
                           f"unexpected keys {unexpected[:8]}, shape mismatches {shapes[:5]}. Are the model "
                           f"kwargs the ones the checkpoint was trained with?")


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
