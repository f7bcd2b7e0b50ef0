"""Where the database is: a configured URL, or an embedded PostgreSQL started on demand.

``RUA_SINK_DATABASE_URL`` (or ``RUA_SINK_DATABASE_URL_FILE``, a file holding it, for
Kubernetes secrets) names the server. With neither set, rua-sink runs its own server:
``initdb`` once into ``$RUA_SINK_DATA_DIR/pgdata``, then ``pg_ctl start`` on a Unix socket
inside that directory and no TCP port. The server is left running for the next command
(``rua-sink db stop`` stops it). Binaries come from the system's PostgreSQL (``pg_config
--bindir``, ``/usr/lib/postgresql/*/bin``) or, failing that, from the ``pgserver`` wheel
(``pip install 'rua-sink[embedded]'``). PostgreSQL refuses to run as root, so as root the
server runs as the ``postgres`` user if there is one, else as a ``rua-sink`` system user.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from rua_sink.errors import DatabaseError

EMBEDDED_DB = "rua_sink"

#: The database's variables, (variable, default, meaning), as docs/database.md has them;
#: ``rua-sink serve --help`` and ``rua-sink config`` list them with the settings.
VARIABLES = (
    (
        "RUA_SINK_DATABASE_URL",
        "",
        "postgresql://user:password@host:5432/dbname (default: the embedded PostgreSQL)",
    ),
    (
        "RUA_SINK_DATABASE_URL_FILE",
        "",
        "a file holding the URL (a mounted Kubernetes secret)",
    ),
    (
        "RUA_SINK_DATA_DIR",
        "",
        "where the embedded database lives (default ~/.local/share/rua-sink, "
        "/var/lib/rua-sink as root)",
    ),
)


def redacted(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: fit for a terminal or a log."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # not a URL we can take apart: show none of it
        return "<unparsable URL>"
    if password:
        user, _, host = parts.netloc.rpartition("@")
        parts = parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):  # asyncpg takes it there too
        masked = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(masked, safe="/*"))
    return urlunsplit(parts)


def configured_url(env: dict[str, str] | os._Environ[str]) -> str | None:
    url = env.get("RUA_SINK_DATABASE_URL")
    if url:
        return url.strip()
    path = env.get("RUA_SINK_DATABASE_URL_FILE")
    if path:
        try:
            return Path(path).read_text().strip()
        except OSError as exc:
            raise DatabaseError(f"cannot read RUA_SINK_DATABASE_URL_FILE {path}: {exc}") from exc
    return None


def default_data_dir(env: dict[str, str] | os._Environ[str]) -> Path:
    if env.get("RUA_SINK_DATA_DIR"):
        return Path(env["RUA_SINK_DATA_DIR"]).expanduser().resolve()
    if os.geteuid() == 0:
        return Path("/var/lib/rua-sink")
    base = env.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "rua-sink"


def find_bindir() -> Path:
    candidates: list[str] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        out = subprocess.run(  # noqa: S603 - a program found on PATH, fixed arguments
            [pg_config, "--bindir"], capture_output=True, text=True, check=False
        )
        candidates.append(out.stdout.strip())
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    candidates += sorted(glob.glob("/usr/pgsql-*/bin"), reverse=True)
    try:
        with warnings.catch_warnings():
            # pgserver's import asks platformdirs for a runtime directory, which warns
            # when XDG_RUNTIME_DIR is unset; only its binaries are used here.
            warnings.simplefilter("ignore")
            import pgserver._commands  # noqa: PLC0415 - optional extra, only when needed

        candidates.append(str(pgserver._commands.POSTGRES_BIN_PATH))
    except ImportError:
        pass
    for bindir in candidates:
        if bindir and (Path(bindir) / "pg_ctl").exists() and (Path(bindir) / "initdb").exists():
            return Path(bindir)
    raise DatabaseError(
        "no PostgreSQL binaries found for the embedded database: install PostgreSQL, or "
        "pip install 'rua-sink[embedded]', or set RUA_SINK_DATABASE_URL"
    )


@dataclass(frozen=True, slots=True)
class Embedded:
    data_dir: Path
    bindir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/{EMBEDDED_DB}?host={self.pgdata}&port=5432"

    def _user(self) -> str | None:
        if os.geteuid() != 0:
            return None
        for name in ("postgres", "rua-sink"):
            try:
                pwd.getpwnam(name)
                return name
            except KeyError:
                continue
        useradd = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
        # fixed arguments; useradd is the system's own, from PATH
        subprocess.run([*useradd, "rua-sink"], check=True)  # noqa: S603
        return "rua-sink"

    def _run(self, args: list[str], user: str | None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - PostgreSQL's own programs, our arguments
            args, capture_output=True, text=True, check=False, user=user, cwd=self.data_dir
        )

    def start(self) -> str:
        """Initialize if needed, start if not running; returns the connection URL."""
        user = self._user()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(self.data_dir, pw.pw_uid, pw.pw_gid)
        if not (self.pgdata / "PG_VERSION").exists():
            done = self._run(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--locale=C",
                ],
                user,
            )
            if done.returncode != 0:
                raise DatabaseError(f"initdb failed: {done.stderr.strip()[-2000:]}")
        status = self._run([str(self.bindir / "pg_ctl"), "status", "-D", str(self.pgdata)], user)
        if status.returncode != 0:
            options = f"-c listen_addresses='' -k {self.pgdata} -p 5432"
            started = self._run(
                [
                    str(self.bindir / "pg_ctl"),
                    "start",
                    "-w",
                    "-D",
                    str(self.pgdata),
                    "-l",
                    str(self.pgdata / "server.log"),
                    "-o",
                    options,
                ],
                user,
            )
            if started.returncode != 0:
                log = (self.pgdata / "server.log").read_text(errors="replace")[-2000:]
                raise DatabaseError(f"pg_ctl start failed: {started.stderr.strip()}\n{log}")
        return self.url

    def stop(self) -> bool:
        if not (self.pgdata / "PG_VERSION").exists():
            return False
        done = self._run(
            [str(self.bindir / "pg_ctl"), "stop", "-D", str(self.pgdata), "-m", "fast", "-w"],
            self._user(),
        )
        return done.returncode == 0


def embedded(env: dict[str, str] | os._Environ[str]) -> Embedded:
    return Embedded(default_data_dir(env), find_bindir())


def resolve_url(env: dict[str, str] | os._Environ[str], *, quiet: bool = False) -> str:
    """The configured URL, or the embedded server's (started if needed)."""
    url = configured_url(env)
    if url:
        return url
    server = embedded(env)
    url = server.start()
    if not quiet:
        print(
            f"rua-sink: using the embedded PostgreSQL in {server.pgdata} "
            "(set RUA_SINK_DATABASE_URL to use another server)",
            file=sys.stderr,
        )
    return url


async def ensure_database(url: str) -> None:
    """Create the database named in ``url`` if the server does not have it yet (the
    embedded server starts with only ``postgres``; a configured server may allow it).
    A server that cannot be reached or refuses us is a DatabaseError naming the URL
    (without its password) and the setting that chooses it."""
    import asyncpg  # noqa: PLC0415 - keeps the module importable without a loop

    try:
        await _ensure_database(url)
    except (
        OSError,
        TimeoutError,
        ValueError,
        asyncpg.PostgresError,
        asyncpg.InterfaceError,
    ) as exc:
        raise DatabaseError(_unreachable(url, exc)) from exc


def _unreachable(url: str, exc: BaseException) -> str:
    reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return (
        f"cannot use the database at {redacted(url)}: {reason} "
        "(RUA_SINK_DATABASE_URL or RUA_SINK_DATABASE_URL_FILE chooses it)"
    )


async def _ensure_database(url: str) -> None:
    import asyncpg  # noqa: PLC0415 - keeps the module importable without a loop

    try:
        conn = await asyncpg.connect(url)
    except asyncpg.InvalidCatalogNameError:
        parts = urlsplit(url)
        name = unquote(parts.path.lstrip("/"))
        admin_url = urlunsplit((parts.scheme, parts.netloc, "/postgres", parts.query, ""))
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'CREATE DATABASE "{name.replace(chr(34), "")}"')
        except asyncpg.DuplicateDatabaseError:
            pass  # another process created it meanwhile
        finally:
            await admin.close()
        return
    await conn.close()
