"""A local HTTP server that speaks the part of the Hugging Face Hub protocol the project uses.

Written from the requests huggingface_hub 2.x makes (read from its source), so that downloads
and uploads in the tests run the library's real code over real HTTP on 127.0.0.1:

- ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: regular files answer 200 with
  ``X-Repo-Commit``, ``ETag`` (the git blob sha1) and ``Content-Length``; large (LFS) files answer
  302 to a "CDN" on another host name (``localhost``) with ``X-Linked-Etag`` (their sha256) and
  ``X-Linked-Size``, as the Hub does, so the client downloads them from the ``Location``.
  Missing repo / revision / file give 404 with ``X-Error-Code`` RepoNotFound / RevisionNotFound /
  EntryNotFound, which the client turns into its typed errors.
- ``POST /api/validate-yaml`` (the model card's front matter), ``POST /api/repos/create``,
  ``POST /api/models/{repo}/branch/{branch}``, ``POST /api/models/{repo}/preupload/{revision}``
  (every file "regular", so its content travels base64-encoded in the commit; the real Hub
  would route large files through LFS/Xet storage) and
  ``POST /api/models/{repo}/commit/{revision}`` (ndjson). Writes need an ``Authorization``
  header.

``corrupt`` makes the CDN send different bytes (same length) for one file while the metadata
still advertises the true sha256: a transfer gone wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".pth")
GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], branch: str = "main", replace: bool = False) -> str:
        parent = self.branches.get(branch)
        tree = {} if replace or parent is None else dict(self.commits[parent])
        tree.update(files)
        digest = hashlib.sha1(f"{parent}:{len(self.commits)}".encode())
        for path in sorted(tree):
            digest.update(path.encode() + hashlib.sha256(tree[path]).digest())
        sha = digest.hexdigest()
        self.commits[sha] = tree
        self.branches[branch] = sha
        return sha

    def resolve(self, revision: str) -> str | None:
        if revision in self.branches:
            return self.branches[revision]
        return revision if revision in self.commits else None


class LocalHub:
    """``with LocalHub() as hub: hub.add_repo("org/name", files)``; ``hub.url`` is the endpoint."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.corrupted: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn = f"http://localhost:{self.port}/cdn"  # another host name, as the Hub's CDN is
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> LocalHub:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- content

    def add_repo(self, repo_id: str, files: dict[str, bytes] | Path, branch: str = "main") -> str:
        """Create (or add a commit to) a repo; returns the commit hash."""
        if isinstance(files, Path):
            files = {p.name: p.read_bytes() for p in sorted(files.iterdir()) if p.is_file()}
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo())
            return repo.commit(dict(files), branch)

    def corrupt(self, repo_id: str, path: str, enabled: bool = True) -> None:
        with self.lock:
            (self.corrupted.add if enabled else self.corrupted.discard)((repo_id, path))

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        return repo.commits[repo.resolve(revision)]


def _handler(hub: LocalHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output clean
            pass

        # -- plumbing

        def _send(
            self, status: int, headers: dict[str, str] | None = None, body: bytes = b"", head: bool = False
        ) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head and body:
                self.wfile.write(body)

        def _json(self, status: int, data: object, headers: dict[str, str] | None = None) -> None:
            self._send(status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(data).encode())

        def _error(
            self, status: int, code: str, message: str, head: bool = False, headers: dict[str, str] | None = None
        ) -> None:
            extra = {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})}
            body = json.dumps({"error": message}).encode()
            self._send(status, {"Content-Type": "application/json", **extra}, body, head)

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        # -- downloads

        def _resolve(self, head: bool) -> None:
            parts = unquote(urlsplit(self.path).path).strip("/").split("/")
            if len(parts) < 5 or parts[2] != "resolve":
                return self._error(404, "NotFound", "not found", head)
            repo_id, revision, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            with hub.lock:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found", head)
                commit = repo.resolve(revision)
                if commit is None:
                    return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision, head)
                data = repo.commits[commit].get(filename)
            if data is None:
                return self._error(404, "EntryNotFound", "Entry not found", head, {"X-Repo-Commit": commit})
            headers = {"X-Repo-Commit": commit, "ETag": f'"{git_blob_sha1(data)}"'}
            if filename.endswith(LFS_SUFFIXES):
                sha = hashlib.sha256(data).hexdigest()
                headers.update(
                    {
                        "X-Linked-Etag": f'"{sha}"',
                        "X-Linked-Size": str(len(data)),
                        "Location": f"{hub.cdn}/{repo_id}/{sha}",
                    }
                )
                return self._send(302, headers, head=head)
            self._send(200, headers, data, head)

        def _cdn(self, head: bool) -> None:
            parts = urlsplit(self.path).path.strip("/").split("/")  # cdn/org/name/sha256
            repo_id, sha = "/".join(parts[1:3]), parts[3]
            with hub.lock:
                repo = hub.repos.get(repo_id)
                found = [
                    (p, d)
                    for tree in (repo.commits.values() if repo else [])
                    for p, d in tree.items()
                    if hashlib.sha256(d).hexdigest() == sha
                ]
                if not found:
                    return self._send(404, head=head)
                path, data = found[0]
                if (repo_id, path) in hub.corrupted:
                    data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
            self._send(200, {"Content-Type": "application/octet-stream"}, data, head)

        def _route_get(self, head: bool) -> None:
            with hub.lock:
                hub.requests.append(("HEAD" if head else "GET", self.path))
            if self.path.startswith("/cdn/"):
                return self._cdn(head)
            return self._resolve(head)

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._route_get(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._route_get(head=False)

        # -- uploads

        def _validate_yaml(self, content: str) -> None:
            """The model-card check the Hub runs before a README is committed (a subset of it)."""
            errors = []
            if not content.startswith("---\n") or "\n---\n" not in content[4:]:
                errors.append("README.md has no YAML front matter")
            else:
                try:
                    meta = yaml.safe_load(content[4 : content.index("\n---\n", 4)])
                except yaml.YAMLError as error:
                    meta, errors = {}, [f"invalid YAML: {error}"]
                if not isinstance(meta, dict):
                    errors.append("the front matter is not a mapping")
                elif meta.get("license") == "other" and not meta.get("license_name"):
                    errors.append('"license_name" is required when "license" is "other"')
            status = 400 if errors else 200
            self._json(status, {"errors": [{"message": e} for e in errors], "warnings": []})

        def do_POST(self) -> None:  # noqa: N802
            body = self._body()
            with hub.lock:
                hub.requests.append(("POST", self.path))
            if not self.headers.get("Authorization", "").startswith("Bearer "):
                return self._error(401, "Unauthorized", "Invalid credentials in Authorization header")
            path = unquote(urlsplit(self.path).path)
            if path == "/api/validate-yaml":
                return self._validate_yaml(json.loads(body)["content"])
            if path == "/api/repos/create":
                data = json.loads(body)
                repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                with hub.lock:
                    if repo_id in hub.repos:
                        return self._json(
                            409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}
                        )
                    hub.repos[repo_id] = Repo()
                    hub.repos[repo_id].commit({".gitattributes": GITATTRIBUTES})
                return self._json(200, {"url": f"{hub.url}/{repo_id}", "name": repo_id})
            parts = path.strip("/").split("/")  # api/models/org/name/<action>/<revision>
            if len(parts) < 6 or parts[:2] != ["api", "models"]:
                return self._error(404, "NotFound", "not found")
            repo_id, action, revision = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
            with hub.lock:
                repo = hub.repos.get(repo_id)
                if repo is None:
                    return self._error(404, "RepoNotFound", "Repository not found")
                if action == "branch":
                    if revision in repo.branches:
                        return self._error(409, "BranchExists", "branch already exists")
                    repo.branches[revision] = repo.branches["main"]
                    return self._json(200, {})
                if repo.resolve(revision) is None:
                    return self._error(404, "RevisionNotFound", "Invalid rev id: " + revision)
                if action == "preupload":
                    files = [
                        {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                        for f in json.loads(body)["files"]
                    ]
                    return self._json(200, {"files": files, "commitOid": repo.resolve(revision)})
                if action == "commit":
                    files = {}
                    for line in body.splitlines():
                        item = json.loads(line)
                        if item["key"] == "file":
                            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        elif item["key"] != "header":
                            return self._error(400, "BadRequest", f"unsupported operation {item['key']}")
                    sha = repo.commit(files, revision)
                    return self._json(200, {"commitUrl": f"{hub.url}/{repo_id}/commit/{sha}", "commitOid": sha})
            return self._error(404, "NotFound", "not found")

    return Handler
