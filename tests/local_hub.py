"""
A Hugging Face Hub server on 127.0.0.1 for tests: the few HTTP endpoints that `huggingface_hub` calls to create a
repo, create and delete branches, commit (regular and LFS files), list refs and trees, and download files.

The real Hub cannot be reached here, so this is the only stand-in: every client-side step (HfApi, the commit and
LFS protocols, snapshot_download and the cache it writes, transformers' from_pretrained) is the real library code.
The server keeps git-like state (commits with parents, branches pointing at commits, file trees per commit, LFS
objects by sha256) and records every call, so that tests assert what was created and committed on which branch.
Downloads go through the same state, so a file can only be downloaded from a branch it was committed to.

Set `HF_HUB_DISABLE_XET=1` in clients: uploads and downloads then use the plain LFS / HTTP protocols.
"""

import base64
import fnmatch
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

# The patterns of the `.gitattributes` the Hub writes into a new model repo (abridged to what matters here).
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.ckpt", "*.h5", "*.onnx", "*.npy", "*.zip")
)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub also stores files over 10 MB with LFS


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


@dataclass
class StoredFile:
    size: int
    sha256: str
    lfs: bool
    content: bytes | None = None  # regular files; LFS contents live in `LocalHub.lfs_objects`

    @property
    def pointer(self) -> bytes:
        return f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\nsize {self.size}\n".encode()

    @property
    def oid(self) -> str:
        """The git blob id, as the Hub reports it: of the content, or of the LFS pointer."""
        return git_blob_id(self.pointer if self.lfs else self.content)


@dataclass
class Commit:
    oid: str
    parent: str | None
    message: str
    files: dict[str, StoredFile]


@dataclass
class Repo:
    repo_id: str
    private: bool
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)

    def history(self, branch: str) -> list[Commit]:
        """Commits of `branch`, oldest first."""
        commits, oid = [], self.branches[branch]
        while oid is not None:
            commits.append(self.commits[oid])
            oid = self.commits[oid].parent
        return commits[::-1]


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **extra):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra


class LocalHub:
    """The server and its state. Use as a context manager; `url` is the endpoint to give clients."""

    def __init__(self, tokens: tuple[str, ...] = ("hf_local_write_token",)):
        self.tokens = set(tokens)
        self.repos: dict[str, Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.calls: list[dict] = []
        self.fail_commits = 0  # the next N commit requests answer 500, as a flaky Hub would
        self.failed_commits = 0
        # Fault injection by action ("commit", "branch", "delete_branch", "refs", "tree", ...): the next N requests
        # of that action answer `fail_status` (503: the Hub is down).
        self.fail_next: dict[str, int] = {}
        self.fail_status = 503
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "LocalHub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()

    # --- what tests read ----------------------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str) -> dict[str, bytes]:
        """Path -> content of every file at the head of `revision` (a branch or a commit id)."""
        repo = self.repos[repo_id]
        commit = repo.commits[repo.branches.get(revision, revision)]
        return {path: self._content(stored) for path, stored in commit.files.items()}

    def commit_calls(self, repo_id: str) -> list[dict]:
        return [call for call in self.calls if call["action"] == "commit" and call["repo_id"] == repo_id]

    # --- state changes ------------------------------------------------------------------------------------------
    def _content(self, stored: StoredFile) -> bytes:
        return self.lfs_objects[stored.sha256] if stored.lfs else stored.content

    def _repo(self, repo_id: str, token: str | None, write: bool = False) -> Repo:
        repo = self.repos.get(repo_id)
        authorized = token in self.tokens
        if repo is None or (repo.private and not authorized):
            raise HubError(404 if authorized else 401, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
        if write and not authorized:
            raise HubError(403, f"You don't have the rights to write to {repo_id}")
        return repo

    def _resolve(self, repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return repo.commits[oid]

    def _new_commit(self, repo: Repo, parent: str | None, message: str, files: dict[str, StoredFile]) -> Commit:
        digest = hashlib.sha1(f"{repo.repo_id}\n{parent}\n{message}\n{len(repo.commits)}".encode())
        for path in sorted(files):
            digest.update(f"{path} {files[path].oid}\n".encode())
        commit = Commit(digest.hexdigest(), parent, message, files)
        repo.commits[commit.oid] = commit
        return commit

    def _is_lfs(self, commit: Commit, path: str, size: int) -> bool:
        attributes = commit.files.get(".gitattributes")
        patterns = [
            line.split()[0]
            for line in (attributes.content.decode() if attributes else "").splitlines()
            if "filter=lfs" in line
        ]
        name = path.rsplit("/", 1)[-1]
        return size > LFS_SIZE_THRESHOLD or any(fnmatch.fnmatch(name, pattern) for pattern in patterns)

    def create_repo(self, payload: dict, token: str | None) -> dict:
        if token not in self.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        if repo_id in self.repos:
            # The Hub's conflict answer still carries the repo's url, which `create_repo(exist_ok=True)` returns.
            raise HubError(409, "You already created this model repo", url=f"{self.url}/{repo_id}")
        repo = self.repos[repo_id] = Repo(repo_id, private=payload.get("visibility") == "private")
        attributes = DEFAULT_GITATTRIBUTES.encode()
        initial = StoredFile(len(attributes), hashlib.sha256(attributes).hexdigest(), False, attributes)
        repo.branches["main"] = self._new_commit(repo, None, "initial commit", {".gitattributes": initial}).oid
        return {"url": f"{self.url}/{repo_id}", "name": repo_id}

    def create_branch(self, repo: Repo, branch: str, payload: dict) -> dict:
        if branch in repo.branches:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        repo.branches[branch] = self._resolve(repo, payload.get("startingPoint") or "main").oid
        return {}

    def delete_branch(self, repo: Repo, branch: str) -> dict:
        if branch == repo.branches.get("main") or branch == "main":
            raise HubError(403, "Cannot delete the default branch")
        if branch not in repo.branches:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        del repo.branches[branch]
        self.calls.append({"action": "delete_branch", "repo_id": repo.repo_id, "revision": branch})
        return {}

    def inject_fault(self, action: str):
        """Raise the injected failure of `action`, if one is pending."""
        if self.fail_next.get(action, 0) > 0:
            self.fail_next[action] -= 1
            raise HubError(self.fail_status, f"Service Unavailable (injected for {action})")

    def preupload(self, repo: Repo, revision: str, payload: dict) -> dict:
        commit = self._resolve(repo, revision)
        answers = []
        for item in payload["files"]:
            lfs = self._is_lfs(commit, item["path"], item["size"])
            existing = commit.files.get(item["path"])
            # The Hub answers the file's current oid; clients skip files that did not change.
            remote_oid = None if existing is None else (existing.sha256 if existing.lfs else existing.oid)
            answers.append(
                {
                    "path": item["path"],
                    "uploadMode": "lfs" if lfs else "regular",
                    "shouldIgnore": False,
                    "oid": remote_oid,
                }
            )
        return {"files": answers, "commitOid": commit.oid}

    def lfs_batch(self, payload: dict) -> dict:
        objects = []
        for item in payload["objects"]:
            entry = {"oid": item["oid"], "size": item["size"]}
            if item["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{item['oid']}"}}
            objects.append(entry)
        return {"transfer": "basic", "objects": objects}

    def commit(self, repo: Repo, revision: str, lines: list[dict]) -> dict:
        if revision not in repo.branches:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        head = repo.commits[repo.branches[revision]]
        header = lines[0]["value"]
        if header.get("parentCommit") not in (None, head.oid):
            raise HubError(412, "A commit has happened since. Please refresh and try again.")
        files = dict(head.files)
        operations = []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            path = value["path"]
            if key == "file":
                content = base64.b64decode(value["content"])
                files[path] = StoredFile(len(content), hashlib.sha256(content).hexdigest(), False, content)
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    raise HubError(400, f"LFS object {value['oid']} of {path} was never uploaded")
                files[path] = StoredFile(value["size"], value["oid"], True)
            elif key == "deletedFile":
                if path not in files:
                    raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                del files[path]
            elif key == "deletedFolder":
                files = {p: f for p, f in files.items() if not p.startswith(path.rstrip("/") + "/")}
            else:
                raise HubError(400, f"commit operation {key!r} is not supported by the local hub")
            operations.append((key, path))
        commit = self._new_commit(repo, head.oid, header["summary"], files)
        repo.branches[revision] = commit.oid
        self.calls.append(
            {
                "action": "commit",
                "repo_id": repo.repo_id,
                "revision": revision,
                "message": header["summary"],
                "operations": operations,
                "commit": commit.oid,
            }
        )
        return {"commitUrl": f"{self.url}/{repo.repo_id}/commit/{commit.oid}", "commitOid": commit.oid}

    def tree(self, repo: Repo, revision: str, folder: str, recursive: bool) -> list[dict]:
        commit = self._resolve(repo, revision)
        prefix = f"{folder.strip('/')}/" if folder.strip("/") else ""
        entries, folders = [], set()
        for path in sorted(commit.files):
            if not path.startswith(prefix):
                continue
            parts = path[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                sub = prefix + "/".join(parts[:depth])
                if (recursive or depth == 1) and sub not in folders:
                    folders.add(sub)
                    entries.append({"type": "directory", "oid": git_blob_id(sub.encode()), "size": 0, "path": sub})
            if recursive or len(parts) == 1:
                stored = commit.files[path]
                entry = {"type": "file", "oid": stored.oid, "size": stored.size, "path": path}
                if stored.lfs:
                    entry["lfs"] = {"oid": stored.sha256, "size": stored.size, "pointerSize": len(stored.pointer)}
                entries.append(entry)
        return entries

    def model_info(self, repo: Repo, revision: str) -> dict:
        commit = self._resolve(repo, revision)
        return {
            "id": repo.repo_id,
            "modelId": repo.repo_id,
            "sha": commit.oid,
            "private": repo.private,
            "tags": [],
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def refs(self, repo: Repo) -> dict:
        branches = [
            {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid} for name, oid in repo.branches.items()
        ]
        return {"branches": branches, "tags": [], "converts": [], "pullRequests": []}


def _make_handler(hub: LocalHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet
            pass

        def _token(self) -> str | None:
            header = self.headers.get("Authorization", "")
            return header[len("Bearer ") :] if header.startswith("Bearer ") else None

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data, status: int = 200):
            self._send(status, json.dumps(data).encode())

        def _dispatch(self):
            url = urlparse(self.path)
            parts = [unquote(part) for part in url.path.strip("/").split("/")]
            query = parse_qs(url.query)
            token = self._token()
            body = self._body() if self.command in ("POST", "PUT") else b""
            try:
                with hub._lock:
                    self._route(parts, query, token, body)
            except HubError as error:
                headers = {"X-Error-Message": error.message}
                if error.code:
                    headers["X-Error-Code"] = error.code
                self._send(error.status, json.dumps({"error": error.message, **error.extra}).encode(), headers)

        def _route(self, parts: list[str], query: dict, token: str | None, body: bytes):
            method = self.command
            if parts[:3] == ["api", "repos", "create"] and method == "POST":
                return self._json(hub.create_repo(json.loads(body), token))
            if parts[:2] == ["api", "validate-yaml"]:
                return self._json({"errors": [], "warnings": []})
            if parts[:2] == ["api", "models"] and len(parts) >= 4:
                repo_id, action, rest = f"{parts[2]}/{parts[3]}", (parts[4] if len(parts) > 4 else ""), parts[5:]
                write = action in ("branch", "preupload", "commit")
                repo = hub._repo(repo_id, token, write=write)
                hub.inject_fault("delete_branch" if (action, method) == ("branch", "DELETE") else action)
                if action == "branch" and method == "POST":
                    return self._json(hub.create_branch(repo, rest[0], json.loads(body or b"{}")))
                if action == "branch" and method == "DELETE":
                    return self._json(hub.delete_branch(repo, rest[0]))
                if action == "preupload":
                    return self._json(hub.preupload(repo, rest[0], json.loads(body)))
                if action == "commit":
                    if hub.fail_commits > 0:
                        hub.fail_commits -= 1
                        hub.failed_commits += 1
                        raise HubError(500, "Internal Error - We're working hard to fix this as soon as possible!")
                    lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                    return self._json(hub.commit(repo, rest[0], lines))
                if action == "refs":
                    return self._json(hub.refs(repo))
                if action == "tree":
                    recursive = query.get("recursive", ["false"])[0].lower() in ("1", "true")
                    return self._json(hub.tree(repo, rest[0], "/".join(rest[1:]), recursive))
                if action == "revision":
                    return self._json(hub.model_info(repo, rest[0]))
                if action == "":
                    return self._json(hub.model_info(repo, "main"))
            if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
                hub._repo(f"{parts[0]}/{parts[1][: -len('.git')]}", token, write=True)
                return self._send(200, json.dumps(hub.lfs_batch(json.loads(body))).encode(), None, "application/json")
            if parts[0] == "lfs-upload" and method == "PUT":
                if hashlib.sha256(body).hexdigest() != parts[1]:
                    raise HubError(400, "uploaded content does not match its sha256")
                hub.lfs_objects[parts[1]] = body
                return self._send(200)
            if len(parts) >= 5 and parts[2] == "resolve" and method in ("GET", "HEAD"):
                repo = hub._repo(f"{parts[0]}/{parts[1]}", token)
                commit = hub._resolve(repo, parts[3])
                path = "/".join(parts[4:])
                stored = commit.files.get(path)
                if stored is None:
                    raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
                headers = {"X-Repo-Commit": commit.oid, "ETag": f'"{stored.oid}"'}
                if stored.lfs:
                    headers.update({"X-Linked-Etag": f'"{stored.sha256}"', "X-Linked-Size": str(stored.size)})
                return self._send(200, hub._content(stored), headers, "application/octet-stream")
            raise HubError(404, f"the local hub has no route for {method} /{'/'.join(parts)}")

        do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    return Handler
