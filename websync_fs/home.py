"""Where one machine's WebSync keeps its config, state and cache.

A *home* is one independent machine: two homes on one computer are two clients
with their own login, replica, queue and cache (that is how tests run several
machines on one box).  ``--home DIR`` or ``$WEBSYNC_HOME`` puts everything under
DIR; otherwise the system's own places for each (platformdirs: the XDG base
directories on Linux, ~/Library on macOS, %LOCALAPPDATA% on Windows).

A shared folder is a *place* of its own on a machine (`Home.place`): the same
login and config, with its own state and cache under ``shared/STORE`` of the
home's, so it is mounted or synced by an engine of its own that follows the
folder's store instead of the user's.  ``share.json`` there records which
folder it is (store, name, owner, read-only) as the server last said.
"""

from __future__ import annotations

import json
import os
import re
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError
from .names import DEFAULT_LOCAL_ONLY, DEFAULT_TEMPORARY

DEFAULT_CACHE_LIMIT = 10 * 1024**3


@dataclass
class Settings:
    """The user-editable part of the config (``config.json``)."""

    server: str = ""
    user: str = ""
    device: str = field(default_factory=socket.gethostname)
    store: str = ""
    #: A PEM file of the CA that signed the server's certificate ("": the system's CAs).
    ca_file: str = ""
    #: The user chose plain http:// to a server beyond this machine.
    insecure_http: bool = False
    cache_limit: int = DEFAULT_CACHE_LIMIT
    #: Seconds a change waits for the program's next changes (a chmod, a rename
    #: after the close) before it is uploaded.
    first_quiet_period: float = 0.05
    #: Seconds a change waits for more changes when its file's content went up less
    #: than 2 s ago: a file that keeps changing goes up once its writer pauses.
    quiet_period: float = 0.2
    #: Seconds a file with a temporary-looking name waits (see names.py).
    temporary_quiet_period: float = 3.0
    #: Seconds a file moved away or deleted waits: a save that puts a new file
    #: in its place within that time becomes a new version of the same file.
    replace_quiet_period: float = 1.0
    #: Name patterns that never leave this machine, and that upload late.
    local_only: list[str] = field(default_factory=lambda: list(DEFAULT_LOCAL_ONLY))
    temporary: list[str] = field(default_factory=lambda: list(DEFAULT_TEMPORARY))
    #: Owners and groups set with chown, shown here under another number: the store's
    #: number (a string, as JSON keys are) -> this machine's (docs/posix.md, "Owners").
    uid_map: dict[str, int] = field(default_factory=dict)
    gid_map: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Home:
    config_dir: Path
    state_dir: Path
    cache_dir: Path
    #: The shared folder this home follows ("": the user's own store).
    store: str = ""

    @classmethod
    def locate(cls, home: str | os.PathLike[str] | None = None) -> Home:
        root = home or os.environ.get("WEBSYNC_HOME")
        if root:
            base = Path(root).expanduser().absolute()
            return cls(base, base / "state", base / "cache")
        # The system's own places: XDG on Linux, ~/Library on macOS, %LOCALAPPDATA% on Windows.
        from platformdirs import PlatformDirs

        dirs = PlatformDirs("websync", appauthor=False)
        return cls(dirs.user_config_path, dirs.user_state_path, dirs.user_cache_path)

    def place(self, store: str) -> Home:
        """The home of shared folder *store* on this machine: this login, its own state and cache."""
        if not re.fullmatch(r"[0-9a-f]{32}", store):
            raise ConfigError(f"{store!r} is not a shared folder's store id")
        return Home(self.config_dir, self.state_dir / "shared" / store, self.cache_dir / "shared" / store, store)

    def places(self) -> list[Home]:
        """The homes of the shared folders this machine has mounted or synced."""
        found = self.state_dir / "shared"
        stores = sorted(p.name for p in found.iterdir()) if found.is_dir() else []
        return [self.place(s) for s in stores if re.fullmatch(r"[0-9a-f]{32}", s)]

    def share(self) -> dict[str, object]:
        """What ``share.json`` says of this place's folder ({} for the user's own store or none yet)."""
        try:
            data = json.loads(self.share_file.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_share(self, share: dict[str, object]) -> None:
        self.ensure()
        write_private(self.share_file, json.dumps(share, indent=2) + "\n")

    # -- paths ---------------------------------------------------------------
    @property
    def share_file(self) -> Path:
        return self.state_dir / "share.json"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "config.json"

    @property
    def token_file(self) -> Path:
        return self.config_dir / "token"

    @property
    def replica_db(self) -> Path:
        return self.state_dir / "replica.db"

    @property
    def known_db(self) -> Path:
        """A synced folder's last synced state (folder/known.py)."""
        return self.state_dir / "folder.db"

    @property
    def queue_db(self) -> Path:
        return self.state_dir / "queue.db"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "mount.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "websync.log"

    @property
    def kept_dir(self) -> Path:
        """Where the files changed in a folder no longer shared, and never sent, are kept: the own home's."""
        return (self.state_dir.parent.parent if self.store else self.state_dir) / "kept"

    @property
    def work_dir(self) -> Path:
        """Working copies of files open for writing."""
        return self.cache_dir / "work"

    @property
    def blocks_dir(self) -> Path:
        return self.cache_dir / "blocks"

    def forget(self) -> None:
        """Delete what this machine holds of its store: tree, queue, last synced state, working copies, blocks.

        For a shared folder no longer shared with this user; the status, the
        share record and the logs stay (they say what happened).
        """
        import shutil

        shutil.rmtree(self.cache_dir, ignore_errors=True)
        data = (self.replica_db.name, self.queue_db.name, self.known_db.name)
        for path in self.state_dir.iterdir() if self.state_dir.is_dir() else []:
            if path.name.startswith(data):  # with SQLite's -wal and -shm files
                path.unlink(missing_ok=True)

    def revoked(self) -> str:
        """Why this shared folder's place stopped: no longer shared with this user ("": it is, or own store)."""
        if not self.store:
            return ""
        try:
            return str(json.loads(self.status_file.read_text()).get("revoked") or "")
        except (OSError, ValueError, AttributeError):
            return ""

    def forgotten(self) -> bool:
        """True once this place of a folder no longer shared is gone, its unsent files kept.

        A revoked place that still has its replica could not keep them all yet
        (a full disk): the next look at the list of shared folders tries again.
        """
        return bool(self.revoked()) and not self.replica_db.exists()

    def ensure(self) -> None:
        for path in (self.config_dir, self.state_dir, self.cache_dir, self.work_dir):
            path.mkdir(parents=True, exist_ok=True, mode=0o700)

    # -- settings and token --------------------------------------------------
    def load_settings(self) -> Settings:
        try:
            data = json.loads(self.config_file.read_text())
        except FileNotFoundError:
            return Settings()
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {self.config_file}: {exc}") from exc
        known = {k: v for k, v in data.items() if k in Settings.__dataclass_fields__}
        return Settings(**known)

    def save_settings(self, settings: Settings) -> None:
        self.ensure()
        write_private(self.config_file, json.dumps(asdict(settings), indent=2) + "\n")

    def load_token(self) -> str:
        try:
            return self.token_file.read_text().strip()
        except FileNotFoundError:
            raise ConfigError("this machine is not logged in; run 'websync login URL --user NAME' first") from None

    def save_token(self, token: str) -> None:
        self.ensure()
        write_private(self.token_file, token + "\n")

    def drop_token(self) -> None:
        """Forget this machine's token (after a logout); settings and queued changes stay."""
        self.token_file.unlink(missing_ok=True)

    def logged_in(self) -> tuple[Settings, str]:
        settings = self.load_settings()
        token = self.load_token()
        if not settings.server:
            raise ConfigError("this machine is not logged in; run 'websync login URL --user NAME' first")
        if self.store:
            settings.store = self.store  # a shared folder's place follows the folder's store
        return settings, token


def write_private(path: Path, text: str) -> None:
    """Write *text* atomically to *path* with mode 0600 (it may hold a token)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
