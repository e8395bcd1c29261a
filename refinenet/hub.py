"""Model folders by name: resolve through the zoo, download from the Hub, publish to it.

Writing and strictly reading a model folder on disk is :mod:`refinenet.folder`'s job; this
module finds the folder for a name and moves folders to and from the Hugging Face Hub.

``from_pretrained(name)`` accepts a local folder, a zoo model id, or a Hub repo id, and tries in
order: the local folder, the Hugging Face cache, a Hub download (``hf_hub_download``, so
``HF_ENDPOINT``, ``HF_HOME``/``HF_HUB_CACHE``, tokens and ``HF_HUB_OFFLINE`` behave as
everywhere else in the Hugging Face tools), the copy bundled with the package, and finally an
error listing everything it tried. Weights are checked against the zoo's sha256 (or, for other
repos, against the sha256 the Hub reports for LFS files) before use; a copy that fails the check
is removed from the cache so that it cannot be picked up again.

Nothing large is fetched blind: a download reads the weights' size from the Hub's metadata and
fetches and validates ``config.json`` first, so a repository whose config asks for an absurd
model, or whose weights exceed ``max_weight_bytes``, is refused before its weights are
downloaded. ``allow_local=False`` never reads the name as a path (a server that resolves names
typed by strangers must not reveal what its disk holds).
"""

from __future__ import annotations

import importlib
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from huggingface_hub import (
    HfApi,
    constants,
    get_hf_file_metadata,
    hf_hub_download,
    hf_hub_url,
    try_to_load_from_cache,
)
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from torch import nn

from . import zoo
from .config import MAX_CONFIG_BYTES, ConfigError, RefineNetConfig
from .folder import (
    CARD_NAME,
    CONFIG_NAME,
    DEFAULT_MAX_WEIGHT_BYTES,
    MAX_HEADER_BYTES,
    WEIGHTS_NAME,
    BundledFallbackWarning,
    IntegrityError,
    ModelNotFoundError,
    StrictLoadError,
    TooLargeError,
    WeightsError,
    check_weight_budget,
    load_folder,
    save_pretrained,
    sha256_file,
)
from .models import RefineNet

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ----------------------------------------------------------------------------- resolution


@dataclass
class ResolvedModel:
    """Where a model folder was found. ``source`` is one of "local folder", "Hugging Face
    cache", "Hub download", "bundled copy"; ``attempts`` lists the sources tried before it."""

    folder: Path
    source: str
    model_id: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    sha256: str | None = None
    attempts: list[str] = field(default_factory=list)


def is_offline() -> bool:
    """``HF_HUB_OFFLINE`` as huggingface_hub read it at import, or as set since."""
    env = os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}
    return bool(constants.HF_HUB_OFFLINE) or env


def _blob_sha256(path: str) -> str | None:
    """The sha256 the Hub reported for a cached file: LFS blobs are stored under it."""
    name = Path(os.path.realpath(path)).name
    return name if _SHA256.match(name) else None


def _purge_cached(path: str) -> None:
    """Remove a cached file: its snapshot entry and the blob behind it."""
    blob = os.path.realpath(path)
    Path(path).unlink(missing_ok=True)
    if blob != os.path.abspath(path):
        Path(blob).unlink(missing_ok=True)


def _verify_cached(path: str, expected: str | None, what: str) -> str:
    """Check a cached weights file; on mismatch remove it and raise IntegrityError."""
    expected = expected or _blob_sha256(path)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        _purge_cached(path)
        raise IntegrityError(
            f"{what}: model.safetensors has sha256 {actual}, expected {expected}; the file was removed from the "
            "cache. The download was corrupted or the repository changed: retry, or check the revision."
        )
    return actual


def _from_cache(
    repo_id: str, revision: str, cache_dir: str | None, expected: str | None, attempts: list[str]
) -> tuple[Path, str] | None:
    weights = try_to_load_from_cache(repo_id, WEIGHTS_NAME, cache_dir=cache_dir, revision=revision)
    config = try_to_load_from_cache(repo_id, CONFIG_NAME, cache_dir=cache_dir, revision=revision)
    if not isinstance(weights, str) or not isinstance(config, str):
        attempts.append(f"Hugging Face cache: no copy of {repo_id}@{revision}")
        return None
    try:
        sha = _verify_cached(weights, expected, f"cached copy of {repo_id}@{revision}")
    except IntegrityError as error:
        attempts.append(f"Hugging Face cache: {error}")
        return None
    return Path(weights).parent, sha


class _Unreachable(Exception):
    """No Hub answered at the endpoint (the server is not a Hub, or not there)."""


def _connection_errors() -> tuple[type[BaseException], ...]:
    """The HTTP client's "could not connect" errors: huggingface_hub 2.x uses httpx2 (earlier
    versions httpx or requests), and raises them from its metadata calls as they are."""
    errors: list[type[BaseException]] = []
    for module_name, attribute in (("httpx2", "TransportError"), ("httpx", "TransportError")):
        try:
            errors.append(getattr(importlib.import_module(module_name), attribute))
        except (ImportError, AttributeError):
            continue
    return tuple(errors)


_UNREACHABLE: tuple[type[BaseException], ...] = (*_connection_errors(), _Unreachable)


def _download(
    repo_id: str,
    revision: str,
    *,
    cache_dir: str | None,
    endpoint: str | None,
    token: str | bool | None,
    force_download: bool,
    expected: str | None,
    attempts: list[str],
    max_weight_bytes: int,
) -> tuple[Path, str] | None:
    """Config first, weights last: the weights' metadata pins the commit and gives their size,
    the config (a few kilobytes) is fetched and validated, and only a model within the budget
    has its weights downloaded."""
    where = endpoint or constants.ENDPOINT

    def fetch(filename: str, at: str) -> str:
        return hf_hub_download(
            repo_id,
            filename,
            revision=at,
            cache_dir=cache_dir,
            endpoint=endpoint,
            token=token,
            force_download=force_download,
        )

    try:
        try:
            meta = get_hf_file_metadata(
                hf_hub_url(repo_id, WEIGHTS_NAME, revision=revision, endpoint=endpoint), token=token, endpoint=endpoint
            )
        except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError):
            raise
        except HfHubHTTPError as error:  # an answer without the Hub's error codes: not a Hub there
            raise _Unreachable(str(error).splitlines()[0]) from error
        commit = meta.commit_hash or revision
        config_meta = get_hf_file_metadata(
            hf_hub_url(repo_id, CONFIG_NAME, revision=commit, endpoint=endpoint), token=token, endpoint=endpoint
        )
        if config_meta.size is not None and config_meta.size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config.json is {config_meta.size:,} bytes; a config holds a few kilobytes")
        config_path = fetch(CONFIG_NAME, commit)
        check_weight_budget(RefineNetConfig.load(config_path), max_weight_bytes)
        if meta.size is not None and meta.size > max_weight_bytes + MAX_HEADER_BYTES:
            raise TooLargeError(
                f"{WEIGHTS_NAME} is {meta.size / 1e6:,.0f} MB; this loader accepts at most "
                f"{max_weight_bytes / 1e6:,.0f} MB"
            )
        # By the revision asked for, so the cache records it (refs/<branch>) for offline use.
        weights = fetch(WEIGHTS_NAME, revision)
        if Path(weights).parent.name != commit:
            attempts.append(f"Hub download: {repo_id}@{revision} changed while it was being downloaded; try again")
            return None
    except RepositoryNotFoundError:
        attempts.append(
            f"Hub download: {where} has no repository {repo_id} (private and gated repositories "
            "need a token: `hf auth login` or token=...)"
        )
        return None
    except RevisionNotFoundError:
        attempts.append(f"Hub download: {repo_id} on {where} has no revision {revision!r}")
        return None
    except LocalEntryNotFoundError as error:  # (a subclass of EntryNotFoundError: keep it first)
        attempts.append(f"Hub download: {where} could not be reached ({error.__cause__ or error})")
        return None
    except RemoteEntryNotFoundError:
        attempts.append(
            f"Hub download: {repo_id}@{revision} lacks {WEIGHTS_NAME} or {CONFIG_NAME} (only "
            "safetensors model folders are loaded; convert legacy .pth files with `refinenet convert`)"
        )
        return None
    except _UNREACHABLE as error:
        attempts.append(f"Hub download: {where} could not be reached ({error.__cause__ or error})")
        return None
    except (HfHubHTTPError, OSError) as error:
        attempts.append(f"Hub download: {repo_id}@{revision} from {where} failed: {error}")
        return None
    sha = _verify_cached(weights, expected, f"download of {repo_id}@{revision} from {where}")
    return Path(weights).parent, sha


def resolve_pretrained(
    name: str | Path,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    weights_dir: str | Path | None = None,
    force_download: bool = False,
    allow_local: bool = True,
    max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
) -> ResolvedModel:
    """Find the model folder for ``name`` (local folder, zoo model id, or Hub repo id).

    See the module docstring for the order. Raises :class:`IntegrityError` when a downloaded or
    bundled file fails its sha256 check, :class:`ModelNotFoundError` when nothing works, and
    :class:`~refinenet.config.ConfigError` or :class:`TooLargeError` for a Hub model refused
    before its weights were downloaded. ``allow_local=False`` skips the local-folder step.
    """
    name = str(name)
    if allow_local and Path(name).is_dir():
        return ResolvedModel(Path(name), "local folder")
    if allow_local and Path(name).is_file():
        raise WeightsError(
            f"{name} is a file; from_pretrained takes a model folder (config.json + "
            "model.safetensors), a zoo id or a Hub repo id. Convert legacy checkpoints with "
            "`refinenet convert`"
        )
    entry = zoo.MODELS.get(name)
    if entry is None and not _REPO_ID.match(name):
        raise ModelNotFoundError(
            name,
            [
                f"local folder: {name} does not exist",
                f"zoo: no model id {name!r} (known: {', '.join(zoo.MODELS) or 'none'})",
                "Hub: not a repo id of the form ORG/NAME",
            ],
        )
    if entry is not None and entry.sha256 is None:
        raise WeightsError(
            f"the zoo entry {entry.model_id!r} has no sha256 yet, so its weights cannot be verified; compute it "
            "with `refinenet models --hash FOLDER` and fill it in"
        )
    repo_id = entry.repo_id if entry is not None else name
    expected = entry.sha256 if entry is not None else None
    rev = revision or (entry.revision if entry is not None else None) or constants.DEFAULT_REVISION
    cache = str(cache_dir) if cache_dir is not None else None
    attempts: list[str] = [] if entry is not None or not allow_local else [f"local folder: {name} does not exist"]
    if repo_id is None:
        attempts.append("Hub: skipped, the model is not published yet (no repo id in the zoo)")
    else:
        found = None if force_download else _from_cache(repo_id, rev, cache, expected, attempts)
        if found:
            return ResolvedModel(
                found[0], "Hugging Face cache", name if entry else None, repo_id, rev, found[1], attempts
            )
        if is_offline():
            attempts.append("Hub download: skipped, HF_HUB_OFFLINE is set")
        else:
            found = _download(
                repo_id,
                rev,
                cache_dir=cache,
                endpoint=endpoint,
                token=token,
                force_download=force_download,
                expected=expected,
                attempts=attempts,
                max_weight_bytes=max_weight_bytes,
            )
            if found:
                return ResolvedModel(
                    found[0], "Hub download", name if entry else None, repo_id, rev, found[1], attempts
                )
    if entry is not None and entry.bundled:
        folder = zoo.bundled_folder(entry.model_id, weights_dir)
        if (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file():
            actual = sha256_file(folder / WEIGHTS_NAME)
            if actual != expected:
                raise IntegrityError(
                    f"the bundled copy {folder / WEIGHTS_NAME} has sha256 {actual}, the zoo "
                    f"records {expected}; reinstall the package or update the zoo entry"
                )
            if repo_id is not None:
                warnings.warn(
                    f"using the bundled copy of {entry.model_id} because the Hub copy was unavailable: "
                    + "; ".join(attempts),
                    BundledFallbackWarning,
                    stacklevel=3,
                )
            return ResolvedModel(folder, "bundled copy", entry.model_id, repo_id, None, actual, attempts)
        attempts.append(
            f"bundled copy: {folder} has no {CONFIG_NAME} and {WEIGHTS_NAME} (the weights are not "
            f"installed; set ${zoo.WEIGHTS_DIR_ENV} or reinstall the package)"
        )
    elif entry is not None:
        attempts.append("bundled copy: none ships with the package for this model")
    raise ModelNotFoundError(name, attempts)


def from_pretrained(
    name: str | Path,
    revision: str | None = None,
    *,
    cache_dir: str | Path | None = None,
    endpoint: str | None = None,
    token: str | bool | None = None,
    weights_dir: str | Path | None = None,
    force_download: bool = False,
    device: str | torch.device | None = None,
    allow_local: bool = True,
    max_weight_bytes: int = DEFAULT_MAX_WEIGHT_BYTES,
) -> RefineNet:
    """A ready model (eval mode, whatever its class) from a folder, zoo id or Hub repo id.

    The returned model carries ``weights_source`` (a :class:`ResolvedModel`) saying where its
    weights came from. ``allow_local=False`` never treats ``name`` as a path; weights above
    ``max_weight_bytes`` are refused before they are downloaded or read.
    """
    resolved = resolve_pretrained(
        name,
        revision,
        cache_dir=cache_dir,
        endpoint=endpoint,
        token=token,
        weights_dir=weights_dir,
        force_download=force_download,
        allow_local=allow_local,
        max_weight_bytes=max_weight_bytes,
    )
    model = load_folder(resolved.folder, device=device, max_weight_bytes=max_weight_bytes)
    model.weights_source = resolved  # type: ignore[assignment]  # Module.__setattr__ is typed for tensors and modules, stores any value
    return model


# ----------------------------------------------------------------------------- publishing


@dataclass
class PushResult:
    """What ``push_to_hub`` did (or would do, with ``dry_run``)."""

    repo_id: str
    revision: str
    files: list[str]
    sha256: str
    commit: str | None = None
    url: str | None = None
    dry_run: bool = False

    def zoo_fields(self) -> str:
        """The values to record in the zoo entry of this model."""
        return f'repo_id="{self.repo_id}", revision="{self.commit or "<commit>"}", sha256="{self.sha256}"'


def validate_repo_id(repo_id: str) -> str:
    if not _REPO_ID.match(repo_id):
        raise ValueError(f"{repo_id!r} is not a Hub repo id; expected ORG/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def push_to_hub(
    model_or_folder: nn.Module | str | Path,
    repo_id: str,
    *,
    revision: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    endpoint: str | None = None,
    commit_message: str | None = None,
    dry_run: bool = False,
) -> PushResult:
    """Publish a model folder, or a model, with ``HfApi.create_repo`` + ``upload_folder``.

    A model is first written to a temporary folder with :func:`save_pretrained` (its card names
    ``repo_id``). A folder is loaded strictly first, so nothing unloadable is ever published; it
    must have its model card. ``revision`` names a branch (created if missing).
    """
    validate_repo_id(repo_id)
    if isinstance(model_or_folder, nn.Module):
        with tempfile.TemporaryDirectory() as tmp:
            save_pretrained(model_or_folder, tmp, repo_id=repo_id)
            return push_to_hub(
                tmp,
                repo_id,
                revision=revision,
                private=private,
                token=token,
                endpoint=endpoint,
                commit_message=commit_message,
                dry_run=dry_run,
            )
    folder = Path(model_or_folder)
    load_folder(folder)
    if not (folder / CARD_NAME).is_file():
        raise WeightsError(f"{folder} has no {CARD_NAME} model card; write one with save_pretrained")
    files = sorted(p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    result = PushResult(
        repo_id, revision or constants.DEFAULT_REVISION, files, sha256_file(folder / WEIGHTS_NAME), dry_run=dry_run
    )
    if dry_run:
        return result
    api = HfApi(endpoint=endpoint, token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision and revision != constants.DEFAULT_REVISION:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        revision=revision,
        commit_message=commit_message or f"Upload {folder.name} with refinenet push",
        allow_patterns=files,
    )
    result.commit, result.url = info.oid, info.commit_url
    return result


# The model-folder names, errors, save_pretrained and load_folder live in refinenet.folder; they
# are re-exported here because the Hub functions raise and return them.
__all__ = [
    "BundledFallbackWarning",
    "IntegrityError",
    "ModelNotFoundError",
    "PushResult",
    "ResolvedModel",
    "StrictLoadError",
    "WeightsError",
    "from_pretrained",
    "is_offline",
    "load_folder",
    "push_to_hub",
    "resolve_pretrained",
    "save_pretrained",
    "validate_repo_id",
]
