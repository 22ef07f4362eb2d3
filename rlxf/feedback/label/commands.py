"""The ``rlxf label`` commands: their options (typed configs) and the library functions behind them.

``serve`` (the web app), ``user add`` / ``password`` / ``disable`` / ``enable`` / ``logout`` (accounts),
``member add`` / ``remove``, ``project create`` (from a candidates JSONL file), ``push`` (a project straight
from a model's responses) and ``export`` (answers to preference / ratings / raw JSONL). Passwords come
from a file, standard input (``--password-file -``) or a prompt, never from the command line, where every
user of the machine could read them in the process list.
Options are checked when the config is built, before anything heavy is imported; each function imports
the web stack (the ``label`` extra: ``pip install 'rlxf[label]'``) or the model stack only when it runs,
so ``rlxf --help`` needs neither.
"""

from __future__ import annotations

import contextlib
import getpass
import logging
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlxf.config import ConfigError, option
from rlxf.feedback.label.schema import (
    DEFAULT_DB,
    EXPORT_FORMATS,
    Candidate,
    FieldError,
    Settings,
    check_settings,
    read_candidates,
)
from rlxf.models.load import ModelConfig
from rlxf.rollout.engine import SamplingConfig

if TYPE_CHECKING:
    from rlxf.feedback.label.db import Project, User

logger = logging.getLogger(__name__)

DB_HELP = "database URL (sqlite:///FILE or postgresql://USER@HOST/DB) or a SQLite file path"


def _label_extra() -> None:
    """A clear error when the web stack is missing."""
    try:
        import argon2  # noqa: F401
        import fastapi  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            f"rlxf label needs the label extra ({exc.name} is missing): pip install 'rlxf[label]'"
        ) from None


@dataclass
class LabelServeConfig:
    """Options of ``rlxf label serve``."""

    db: str = option(DEFAULT_DB, help=DB_HELP)
    host: str = option("127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    port: int = option(8000, help="TCP port")
    secure_cookie: bool | None = option(
        None,
        help="mark the session cookie Secure (HTTPS only) and send HSTS; default on for a non-loopback --host",
    )
    allowed_hosts: list[str] = option(
        default_factory=list,
        help="Host header values to answer (the name users type; '*': any); default the loopback names and --host",
    )
    forwarded_allow_ips: str | None = option(
        None, help="reverse proxies (comma-separated IPs) whose X-Forwarded-For/-Proto are trusted"
    )
    ssl_certfile: str | None = option(None, help="serve HTTPS with this certificate (PEM) instead of a proxy")
    ssl_keyfile: str | None = option(None, help="the certificate's private key (PEM)")

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1..65535, got {self.port}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("give both --ssl-certfile and --ssl-keyfile, or neither")
        for path in (self.ssl_certfile, self.ssl_keyfile):
            if path is not None and not Path(path).is_file():
                raise ConfigError(f"no such file {path}")


def label_serve(cfg: LabelServeConfig) -> None:
    """Migrate and check the database, then serve the app with uvicorn until interrupted (``rlxf label serve``)."""
    _label_extra()
    from rlxf.feedback.label.app import serve

    serve(
        cfg.db,
        cfg.host,
        cfg.port,
        secure_cookie=cfg.secure_cookie,
        allowed_hosts=list(cfg.allowed_hosts) or None,
        forwarded_allow_ips=cfg.forwarded_allow_ips,
        ssl_certfile=cfg.ssl_certfile,
        ssl_keyfile=cfg.ssl_keyfile,
    )


PASSWORD_FILE_HELP = "file whose first line is the password ('-': standard input); default: ask"


def read_password(password_file: str | None, prompt: str = "Password: ") -> str:
    """The first line of ``password_file`` (``-``: standard input), or typed at a prompt twice."""
    if password_file == "-":
        return sys.stdin.readline().rstrip("\r\n")
    if password_file is not None:
        lines = Path(password_file).read_text(encoding="utf-8").splitlines()
        return lines[0] if lines else ""
    if not sys.stdin.isatty():
        raise ConfigError(
            "give the password with --password-file FILE (or --password-file - for standard input)"
        )
    password = getpass.getpass(prompt)
    if getpass.getpass("Again: ") != password:
        raise ConfigError("the two passwords differ")
    return password


@dataclass
class AccountOptions:
    """The account a ``rlxf label user`` command works on."""

    db: str = option(DEFAULT_DB, help=DB_HELP)
    username: str = option("", help="the account's name")

    def __post_init__(self) -> None:
        if not self.username:
            raise ConfigError("give the account's name: --username NAME")


@dataclass
class LabelUserAddConfig(AccountOptions):
    """Options of ``rlxf label user add``."""

    password_file: str | None = option(None, help=PASSWORD_FILE_HELP)
    admin: bool = option(False, help="an admin: creates projects and accounts, sees every answer and export")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.password_file not in (None, "-") and not Path(self.password_file).is_file():
            raise ConfigError(f"password_file: no such file {self.password_file}")


@contextlib.contextmanager
def _session(db: str) -> Iterator[Any]:
    """A database session on ``--db`` (migrated and checked first), its engine disposed afterwards; a
    :class:`FieldError` raised inside becomes a :class:`ConfigError` naming the field."""
    _label_extra()
    from rlxf.feedback.label.db import init_db, make_engine, make_sessionmaker

    engine = make_engine(db)
    try:
        init_db(engine)
        with make_sessionmaker(engine)() as session:
            yield session
    except FieldError as exc:
        raise ConfigError(f"{exc.field}: {exc.message}") from None
    finally:
        engine.dispose()


def _account(db: Any, cfg: AccountOptions) -> User:
    from rlxf.feedback.label.projects import find_user

    user = find_user(db, cfg.username)
    if user is None:
        raise ConfigError(f"no account {cfg.username!r} in {cfg.db}")
    return user


def label_user_add(cfg: LabelUserAddConfig) -> User:
    """Create an account; the function behind ``rlxf label user add``."""
    password = read_password(cfg.password_file)
    with _session(cfg.db) as db:  # checks the label extra before these imports
        from rlxf.feedback.label.auth import password_hasher
        from rlxf.feedback.label.projects import add_user

        user = add_user(db, password_hasher(), cfg.username, password, cfg.admin)
    logger.info(f"created {'admin' if user.is_admin else 'labeller'} {user.username!r} (id {user.id})")
    return user


@dataclass
class LabelUserPasswordConfig(AccountOptions):
    """Options of ``rlxf label user password``."""

    password_file: str | None = option(None, help=PASSWORD_FILE_HELP)


def label_user_password(cfg: LabelUserPasswordConfig) -> int:
    """Give an account a new password and end its sessions; returns how many ended."""
    password = read_password(cfg.password_file, "New password: ")
    with _session(cfg.db) as db:  # checks the label extra before these imports
        from rlxf.feedback.label.auth import password_hasher
        from rlxf.feedback.label.projects import set_password

        ended = set_password(db, password_hasher(), _account(db, cfg), password)
    logger.info(f"new password for {cfg.username!r}; {ended} session(s) ended")
    return ended


@dataclass
class LabelUserDisableConfig(AccountOptions):
    """Options of ``rlxf label user disable`` / ``enable``."""


def _set_disabled(cfg: AccountOptions, disabled: bool) -> User:
    with _session(cfg.db) as db:  # checks the label extra before these imports
        from rlxf.feedback.label.projects import set_disabled

        user = set_disabled(db, _account(db, cfg), disabled)
    logger.info(f"{'disabled' if disabled else 'enabled'} {cfg.username!r}")
    return user


def label_user_disable(cfg: LabelUserDisableConfig) -> User:
    """Disable an account: it cannot log in and its sessions end now (its answers stay)."""
    return _set_disabled(cfg, True)


def label_user_enable(cfg: LabelUserDisableConfig) -> User:
    """Enable a disabled account again."""
    return _set_disabled(cfg, False)


def label_user_logout(cfg: LabelUserDisableConfig) -> int:
    """End every session of an account (each browser must log in again); returns how many ended."""
    with _session(cfg.db) as db:  # checks the label extra before these imports
        from rlxf.feedback.label.auth import revoke_sessions
        from rlxf.feedback.label.db import begin_write

        user = _account(db, cfg)
        begin_write(db)
        ended = revoke_sessions(db, user.id)
        db.commit()
    logger.info(f"ended {ended} session(s) of {cfg.username!r}")
    return ended


@dataclass
class LabelMemberConfig(AccountOptions):
    """Options of ``rlxf label member add`` / ``remove``."""

    project: str = option("", help="the project's name")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.project:
            raise ConfigError("give the project: --project NAME")


def _project(db: Any, cfg: LabelMemberConfig) -> Project:
    from sqlalchemy import select

    from rlxf.feedback.label.db import Project

    project = db.scalar(select(Project).where(Project.name == cfg.project))
    if project is None:
        raise ConfigError(f"no project called {cfg.project!r} in {cfg.db}")
    return project


def label_member_add(cfg: LabelMemberConfig) -> User:
    """Let an account label a project."""
    with _session(cfg.db) as db:  # checks the label extra before these imports
        from rlxf.feedback.label.projects import add_member

        user = add_member(db, _project(db, cfg), _account(db, cfg).username)
    logger.info(f"{cfg.username!r} may label {cfg.project!r}")
    return user


def label_member_remove(cfg: LabelMemberConfig) -> bool:
    """Stop an account from labelling a project (its answers stay); False if it was no member."""
    with _session(cfg.db) as db:  # checks the label extra before these imports
        from rlxf.feedback.label.projects import remove_member

        removed = remove_member(db, _project(db, cfg), _account(db, cfg).id)
    if not removed:
        raise ConfigError(f"{cfg.username!r} is not a member of {cfg.project!r}")
    logger.info(f"{cfg.username!r} no longer labels {cfg.project!r}")
    return removed


@dataclass
class ProjectOptions:
    """A project's settings as command options (``rlxf label project create`` and ``rlxf label push``)."""

    db: str = option(DEFAULT_DB, help=DB_HELP)
    name: str = option("", help="the project's name (unique)")
    kind: str = option(
        "pairwise", help="pairwise (A/B/tie/both bad), ranking (order the responses) or rating (1..N)"
    )
    labels_per_item: int = option(1, help="answers each item needs (k), from different labellers")
    guidelines: str | None = option(
        None, help="text file of guidelines shown to labellers (plain text/Markdown)"
    )
    aspects: list[str] = option(default_factory=list, help="rating aspects (rating only; default overall)")
    scale: int = option(5, help="ratings run 1..scale (rating only)")
    ask_reason: str = option("optional", help="free-text reason with each answer: off, optional or required")
    members: list[str] = option(default_factory=list, help="usernames that may label the project")

    def __post_init__(self) -> None:
        try:
            check_settings(self.settings(""))
        except FieldError as exc:
            raise ConfigError(str(exc)) from None
        if self.guidelines is not None and not Path(self.guidelines).is_file():
            raise ConfigError(f"guidelines: no such file {self.guidelines}")

    def settings(self, guidelines: str) -> Settings:
        return Settings(
            name=self.name,
            kind=self.kind,
            guidelines=guidelines,
            labels_per_item=self.labels_per_item,
            aspects=list(self.aspects) or None,
            scale=self.scale,
            ask_reason=self.ask_reason,
        )

    def create(self, candidates: list[Candidate]) -> Project:
        """Create the project with ``candidates`` (already checked); on any error nothing is written."""
        _label_extra()
        from rlxf.feedback.label.db import init_db, make_engine, make_sessionmaker
        from rlxf.feedback.label.projects import create_project

        guidelines = Path(self.guidelines).read_text(encoding="utf-8") if self.guidelines else ""
        engine = make_engine(self.db)
        try:
            init_db(engine)
            with make_sessionmaker(engine)() as db:
                project = create_project(db, self.settings(guidelines), candidates, self.members)
        finally:
            engine.dispose()
        logger.info(
            f"created {project.kind} project {project.name!r} (id {project.id}): {len(candidates)} items, "
            f"{project.labels_per_item} label(s) each"
        )
        return project


@dataclass
class LabelProjectCreateConfig(ProjectOptions):
    """Options of ``rlxf label project create``."""

    data: str = option("", help="candidates JSONL: {prompt, responses: [...], id?, meta?} per line")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.data:
            raise ConfigError("give the items: --data FILE.jsonl")


def label_project_create(cfg: LabelProjectCreateConfig) -> Project:
    """Create a project from a candidates file, every line checked first; behind ``rlxf label project create``."""
    candidates = read_candidates(cfg.data, cfg.kind)  # a bad line stops here, before the database is touched
    return cfg.create(candidates)


@dataclass
class LabelPushConfig(ProjectOptions):
    """Options of ``rlxf label push``: a project straight from a model's responses to prompts."""

    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=lambda: SamplingConfig(n=2, max_new_tokens=128))
    prompts: str = option("", help="prompts file (JSONL, CSV, Parquet or a datasets folder) of plain strings")
    seed: int | None = option(None, help="random seed; the same seed gives the same responses")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.prompts:
            raise ConfigError("give the prompts: --prompts FILE")
        if self.kind == "pairwise" and self.sampling.n != 2:
            raise ConfigError(f"a pairwise project needs -n 2 responses per prompt, got {self.sampling.n}")
        if self.kind == "ranking" and self.sampling.n < 2:
            raise ConfigError(
                f"a ranking project needs -n 2 or more responses per prompt, got {self.sampling.n}"
            )


def generate_candidates(cfg: LabelPushConfig) -> list[Candidate]:
    """``cfg.sampling.n`` responses per prompt from ``cfg.model``, through ``rlxf generate``'s engine.

    Prompts must be plain strings (labellers read them as text): a ``messages`` prompt is an error naming
    its line, raised before the model loads. An empty response is shown as ``(empty response)``.
    """
    from rlxf.data import read_data
    from rlxf.rollout.generate import GenerateConfig, generate

    records = read_data(cfg.prompts, kind="prompts")
    for i, record in enumerate(records.records):
        if not isinstance(record.get("prompt"), str):
            raise records.error(
                i, "label push needs plain string prompts (labellers read them as text)", "prompt"
            )
    samples = generate(
        GenerateConfig(model=cfg.model, sampling=cfg.sampling, prompts=cfg.prompts, seed=cfg.seed)
    )
    by_prompt: dict[int, list[str]] = {}
    for sample in samples:
        by_prompt.setdefault(sample.prompt_index, []).append(sample.completion)
    candidates = []
    for index, record in enumerate(records.records):
        responses = [text if text.strip() else "(empty response)" for text in by_prompt[index]]
        meta = {"model": cfg.model.name_or_path, "seed": cfg.seed, "prompt_index": index}
        candidates.append(Candidate(record["prompt"], responses, id=str(index), meta=meta))
    return candidates


def label_push(cfg: LabelPushConfig) -> Project:
    """Generate the responses, then create the project from them; the function behind ``rlxf label push``."""
    _label_extra()  # before the model loads, not after minutes of generation
    return cfg.create(generate_candidates(cfg))


@dataclass
class LabelExportConfig:
    """Options of ``rlxf label export``."""

    db: str = option(DEFAULT_DB, help=DB_HELP)
    project: str = option("", help="name of the project to export")
    format: str = option("preferences", help="preferences (pairwise, ranking), ratings (rating) or raw (any)")
    out: str = option("", help="JSONL file to write (written whole, then renamed into place)")
    min_labels: int | None = option(
        None, help="skip items with fewer answers; default the project's labels_per_item"
    )

    def __post_init__(self) -> None:
        if not self.project:
            raise ConfigError("give the project: --project NAME")
        if self.format not in EXPORT_FORMATS:
            raise ConfigError(f"format must be one of {', '.join(EXPORT_FORMATS)}, got {self.format!r}")
        if not self.out.endswith(".jsonl"):
            raise ConfigError(f"give a .jsonl file to write: --out FILE.jsonl (got {self.out!r})")
        if self.min_labels is not None and self.min_labels < 1:
            raise ConfigError(f"min_labels must be >= 1, got {self.min_labels}")


def label_export(cfg: LabelExportConfig) -> list[dict[str, Any]]:
    """Write a project's answers as JSONL; the function behind ``rlxf label export``."""
    _label_extra()
    from sqlalchemy import select

    from rlxf.feedback.label.db import Project, init_db, make_engine, make_sessionmaker
    from rlxf.feedback.label.export import export_records
    from rlxf.train.atomic import write_jsonl_atomic

    engine = make_engine(cfg.db)
    try:
        init_db(engine)
        with make_sessionmaker(engine)() as db:
            project = db.scalar(select(Project).where(Project.name == cfg.project))
            if project is None:
                raise ValueError(f"no project called {cfg.project!r} in {cfg.db}")
            records = export_records(db, project, cfg.format, min_labels=cfg.min_labels)
    finally:
        engine.dispose()
    write_jsonl_atomic(cfg.out, records)
    logger.info(f"wrote {len(records)} {cfg.format} records of project {cfg.project!r} to {cfg.out}")
    return records
