"""Where a store lives: its final path, its unfinished build and the atomic replace.

Every filesystem operation on a store goes through this module (its build lock through
:mod:`fastimg.store.locks`), so that a store on another kind of storage needs changes here only.

A store is either a local path or an fsspec URL (``s3://bucket/imdb.zarr``, ``gs://...``;
``file://`` URLs are local paths). Local stores are built at ``OUT.partial`` and renamed in
place when complete. Object stores have no atomic rename: a build is written in place and the
completion marker (the ``complete`` attr, written last) is the only sign of a complete store.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastimg.store.schema import (ATTRS_KEY, BUILD_KEY, COMPLETE, PARTIAL_SUFFIX,
                                  REPLACED_SUFFIX, StoreError)

logger = logging.getLogger("fastimg.store")


@dataclass(frozen=True)
class Location:
    """A store on object storage: an fsspec URL and its storage options.

    Its ``str`` is the URL, so messages and records name it as the user wrote it. It is
    picklable, so cluster workers open the same store with the same options.
    """

    url: str
    storage_options: dict = field(default_factory=dict, compare=False)

    def __str__(self) -> str:
        return self.url

    def fs(self):
        """``(filesystem, root path)`` from :func:`fsspec.core.url_to_fs`.

        Raises
        ------
        ImportError
            The protocol's fsspec backend is not installed (the message names its package).
        ValueError
            An unknown protocol, a storage option the backend does not accept, or an
            ``endpoint_url`` without its scheme.
        """
        from fsspec.core import url_to_fs

        try:
            fs, root = url_to_fs(self.url, **self.storage_options)
            # s3fs checks its options only when it connects (http's has set_session, no
            # connect: every https store was said to have a bad storage option)
            if hasattr(fs, "set_session") and hasattr(fs, "connect"):
                fs.connect()
        except ImportError as exc:
            raise ImportError(f"{self.url}: {exc} ({_install_hint(self._package())})") from exc
        except (TypeError, AttributeError) as exc:
            # s3fs: "AioSession.__init__() got an unexpected keyword argument 'a'"; a value of
            # the wrong type (client_kwargs=5): "'int' object has no attribute 'copy'"
            raise ValueError(self._refused_option(exc)) from exc
        except ValueError as exc:
            if str(exc).startswith("Invalid endpoint"):  # botocore's, naming no option
                raise ValueError(f"{self.url}: {exc}: the storage option endpoint_url is a URL "
                                 f"with its scheme, e.g. http://HOST:PORT") from exc
            if not str(exc).startswith("Protocol not known"):
                raise
            raise ValueError(f"{self.url}: unknown protocol {self.protocol}://; a store is "
                             f"{STORE_FORMS}") from exc
        return fs, root

    @property
    def protocol(self) -> str:
        return self.url.split("://", 1)[0]

    def _package(self) -> str:
        """The package of the protocol's fsspec backend (``s3fs`` for ``s3://``)."""
        from fsspec.registry import known_implementations

        found = known_implementations.get(self.protocol, {}).get("class", "")
        return found.split(".")[0] or "its fsspec backend"

    def _refused_option(self, exc: Exception) -> str:
        name = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
        if name:
            what, fix = f"the storage option {name.group(1)!r}", "correct its name"
        else:
            what, fix = f"one of the storage options ({exc})", "correct its name or value"
        return (f"{self.url}: {self._package()} does not accept {what}: {fix} (see "
                f"{self._package()}'s documentation) or drop it from storage_options")


#: packages whose exceptions s3fs lets through (NoCredentialsError, EndpointConnectionError)
STORAGE_PACKAGES = ("botocore", "aiobotocore")


def from_object_storage(exc: BaseException) -> bool:
    """Whether ``exc`` comes from an object store's client library (credentials, endpoint)."""
    return any(cls.__module__.split(".")[0] in STORAGE_PACKAGES for cls in type(exc).__mro__)


def storage_error_message(exc: BaseException) -> str:
    """One line for an object store's client error (:func:`from_object_storage`) that says
    what to check.

    An endpoint out of reach names the endpoint (botocore names the object it was fetching,
    such as the store's ``.lock``, after retrying for several seconds); anything else is the
    client's message with where credentials and the endpoint come from.
    """
    endpoint = getattr(exc, "kwargs", {}).get("endpoint_url")
    if endpoint and "endpoint URL" in str(exc):  # EndpointConnectionError, ConnectTimeoutError
        from urllib.parse import urlsplit

        parts = urlsplit(endpoint)
        server = f"{parts.scheme}://{parts.netloc}" if parts.netloc else endpoint
        reason = "timed out" if "timeout" in str(exc).lower() else "could not connect"
        return (f"the object store's endpoint {server} is out of reach ({reason}): check the "
                f"storage option endpoint_url (or AWS_ENDPOINT_URL) and that the service is "
                f"running and reachable from here")
    return (f"{' '.join(str(exc).split())} (credentials and endpoint come from the usual "
            f"environment variables or storage_options)")


#: the forms of a store's location, for messages
STORE_FORMS = ("a local path or a URL: s3://bucket/path, gs://bucket/path, "
               "az://container/path or file:///path")


def _install_hint(package: str) -> str:
    if package == "s3fs":
        return "s3fs comes with the cluster extra: pip install 'fastimg[cluster]'"
    if package in ("fsspec", "its fsspec backend"):  # fsspec's own message names what to add
        return "install what it names"
    return f"pip install {package}"


@contextmanager
def _access(path):
    """Turn a refused access to ``path`` into one line that says what to check, and a write to
    a missing bucket into one that names the bucket."""
    try:
        yield
    except PermissionError as exc:
        if isinstance(path, Location):
            anon = " (anon=true sends none)" if path.storage_options.get("anon") else ""
            hint = ("check the credentials: the usual environment variables or "
                    f"storage_options{anon}")
        else:
            hint = "check its file permissions"
        raise PermissionError(f"access to {path} was denied ({exc}): {hint}") from exc
    except FileNotFoundError as exc:
        bucket = missing_bucket(path)
        if bucket is None:
            raise
        raise FileNotFoundError(f"{path}: the bucket {bucket} does not exist or cannot be seen "
                                f"with these credentials: create it first, or check the URL "
                                f"and the credentials") from exc


def missing_bucket(path) -> str | None:
    """The bucket (or container) of an object-store ``path`` when it does not exist or these
    credentials cannot see it (s3fs cannot tell the two apart), else None (local paths
    included)."""
    path = resolve(path)
    if not isinstance(path, Location):
        return None
    fs, root = path.fs()
    bucket = root.split("/", 1)[0]
    return None if not bucket or fs.exists(bucket) else bucket


def resolve(path, storage_options: dict | None = None):
    """A local :class:`~pathlib.Path`, or a :class:`Location` for an object-store URL.

    ``file://`` URLs become paths (with the atomic replace); options given for a local
    path are ignored.

    Parameters
    ----------
    path : str, os.PathLike or Location
        A local path, a ``file://`` (or ``local://``) URL, or an fsspec URL (trailing slashes
        dropped). A local path that is a symlink is the path it points to.
    storage_options : dict, optional
        fsspec options of a URL; for a :class:`Location`, merged over its own (these win).

    Returns
    -------
    pathlib.Path or Location

    Raises
    ------
    TypeError
        For anything but a str, an ``os.PathLike`` or a :class:`Location`, and
        ``storage_options`` that are no dict.
    ValueError
        For an object-store URL that names no folder inside a bucket (``s3://``,
        ``s3://bucket``, ``s3://bucket//x.zarr``), and for a path given as a string that is
        a URL with a slash missing (``s3:/bucket/x.zarr``), which would otherwise be written
        on this machine as a folder named ``s3:``.
    """
    if storage_options is not None and not isinstance(storage_options, Mapping):
        raise TypeError(f"storage_options must be a dict of fsspec options, got "
                        f"{type(storage_options).__name__}")
    if isinstance(path, Location):
        if storage_options:
            return Location(path.url, {**path.storage_options, **storage_options})
        return path
    if isinstance(path, Path):
        return _through_link(path)
    if not isinstance(path, (str, os.PathLike)):  # os.fspath's error names no store
        raise TypeError(f"a store is a path or an fsspec URL (str or os.PathLike), got "
                        f"{type(path).__name__}")
    text = os.fspath(path) if not isinstance(path, str) else path
    if "://" not in text:
        _check_not_a_url(text)
        return _through_link(Path(text))
    scheme, rest = text.split("://", 1)
    if scheme in ("file", "local"):
        return _through_link(Path(rest))
    url = text.rstrip("/")
    _check_bucket_path(text, scheme, rest.rstrip("/"))
    return Location(url, dict(storage_options or {}))


def _through_link(path: Path) -> Path:
    """The store a symlink ``path`` points to (absolute), else ``path``: a build replaces
    that store, beside it, and keeps the link (``--force`` made the link a folder of its own,
    left the store it named as it was, and left the link aside as ``.replaced``)."""
    return Path(os.path.realpath(path)) if path.is_symlink() else path


#: protocols whose URLs are ``PROTOCOL://BUCKET/KEY``: a store is a key inside a bucket
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "oci")
#: protocols whose URL with a slash missing (``s3:/b/x``) is refused as a local path
URL_PROTOCOLS = (*BUCKET_PROTOCOLS, "file", "memory", "http", "https", "hdfs", "webhdfs",
                 "ftp", "sftp", "ssh")


def _check_bucket_path(url: str, scheme: str, rest: str) -> None:
    """Refuse an object-store URL that names no store inside a bucket.

    ``s3://`` and ``s3:///x.zarr`` name no bucket (zarr would take them for local paths);
    ``s3://bucket`` is the whole bucket (replacing a store there would empty it);
    ``s3://bucket//x.zarr`` (an empty variable in ``s3://$BUCKET/$PREFIX/x.zarr``) writes
    keys that begin with ``/``, which s3fs can neither list nor delete.

    Raises
    ------
    ValueError
        One line naming the URL and the form it needs.
    """
    if scheme.lower() not in BUCKET_PROTOCOLS:
        return
    form = f"{scheme}://BUCKET/PATH, e.g. {scheme}://my-bucket/imdb.zarr"
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{url} names no bucket: a store on object storage is {form}")
    if not key:
        raise ValueError(f"{url} is a whole bucket: a store is a folder inside it ({form})")
    if "//" in rest:
        raise ValueError(f"{url} has an empty path segment ('//'; an unset variable?): a "
                         f"store is {form}")


def _check_not_a_url(text: str) -> None:
    """Refuse a local path that is a URL with a slash missing (``s3:/bucket/x.zarr``, or
    ``s3:bucket/x.zarr``): it would be written as local folders named ``s3:``, and the
    build would report success. ``./s3:/x`` is the way to mean such a folder.

    Raises
    ------
    ValueError
        One line naming the path and the URL it probably meant.
    """
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]+):(/?)(?!/)(.*)", text)
    if match and match.group(1).lower() in URL_PROTOCOLS:
        scheme, slash, rest = match.groups()
        meant = f"{scheme}://{slash + rest if scheme.lower() == 'file' else rest}"
        raise ValueError(f"{text} looks like a URL with a slash missing: write {meant} (or "
                         f"./{text} for a local folder of that name)")


def is_local(path) -> bool:
    """True for a store on a local (or shared) file system, which has an atomic rename."""
    return isinstance(resolve(path), Path)


def same_store(a, b) -> bool:
    """Whether ``a`` and ``b`` name one store: local paths however spelt (``ds.zarr``,
    ``./x/../ds.zarr``, a link to it), URLs as written."""
    a, b = resolve(a), resolve(b)
    if isinstance(a, Path) and isinstance(b, Path):
        return os.path.realpath(a) == os.path.realpath(b)
    return str(a) == str(b)


def _named(path: Path) -> Path:
    """``path`` with a last name to put a suffix on: ``.`` and ``..`` spelled out (``Path``
    has no name for ``.``, and ``..`` + suffix would be a folder beside the current one)."""
    if path.name in ("", ".."):
        path = Path(os.path.abspath(path))
        if not path.name:
            raise StoreError(f"{path} is the root folder, not a store: give the store's folder, "
                             f"e.g. imdb.zarr")
    return path


def partial_path(path):
    """Where the unfinished build of ``path`` lives (the store itself on object storage)."""
    path = resolve(path)
    if isinstance(path, Location):
        return path
    path = _named(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def replaced_path(path) -> Path:
    """Where a complete local store waits while its replacement is moved in.

    Raises
    ------
    ValueError
        For a store on object storage, which is rebuilt in place (no store waits aside).
    """
    path = resolve(path)
    if isinstance(path, Location):
        raise ValueError(f"{path} is on object storage, where a store is rebuilt in place: "
                         f"it has no replaced path")
    path = _named(path)
    return path.with_name(path.name + REPLACED_SUFFIX)


def exists(path) -> bool:
    """True when something is at ``path``."""
    path = resolve(path)
    with _access(path):
        if isinstance(path, Location):
            fs, root = path.fs()
            return fs.exists(root)
        return path.exists()


def read_attrs(path, key: str = ATTRS_KEY) -> dict | None:
    """The ``fastimg`` attrs (or those under ``key``) of the group at ``path`` (its metadata
    only), or None; a denied access raises :class:`PermissionError` (it is not "no store").

    Parameters
    ----------
    path : str, path or Location
        The group (a store, or an unfinished build).
    key : str
        The attribute to read: :data:`~fastimg.store.schema.ATTRS_KEY` (a finished store's)
        by default, :data:`~fastimg.store.schema.BUILD_KEY` for an unfinished build's records.

    Returns
    -------
    dict or None
        The value under ``key``; None when nothing is at ``path``, its ``zarr.json`` is
        missing, unreadable or not zarr's, or it has no ``key``.

    Raises
    ------
    PermissionError
        When access to ``path`` is denied (the message says what to check).
    TypeError, ValueError
        When ``path`` is no store location (as :func:`resolve`); on object storage also an
        unknown protocol or storage option (as :meth:`Location.fs`).
    ImportError
        When the fsspec backend of the URL's protocol is not installed.
    """
    path = resolve(path)
    with _access(path):
        try:
            if isinstance(path, Location):
                fs, root = path.fs()
                text = fs.cat_file(f"{root}/zarr.json").decode("utf-8")
            else:
                meta = path / "zarr.json"
                if not meta.is_file():
                    return None
                text = meta.read_text(encoding="utf-8")
            meta = json.loads(text)
            attrs = meta.get("attributes", {}) if isinstance(meta, dict) else None
            if not isinstance(attrs, dict):  # a zarr.json that is not zarr's
                return None
        except PermissionError:
            raise  # access denied is not "no store here": _access says what to check
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):  # FileNotFoundError too
            return None
    return attrs.get(key)


def readable(path):
    """Where a reader finds the store of ``path``: ``path`` itself, or, while a replace is
    in flight (or was cut off between its two moves), the complete store moved aside.

    Readers never move or delete anything: only writers :func:`recover`.
    """
    path = resolve(path)
    if isinstance(path, Location) or path.exists():
        return path
    aside = replaced_path(path)
    return aside if aside.exists() else path


def identity(path):
    """``(device, inode)`` of a local store's folder, which a replace changes (it moves another
    folder in), or None (object storage, or nothing at ``path``)."""
    path = resolve(path)
    if isinstance(path, Location):
        return None
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def recorded_name(path) -> str:
    """How another store's records name the store at ``path`` (the source of a copied stage):
    a local path made absolute, so that it names the same folder read from anywhere; a URL as
    it is."""
    path = resolve(path)
    return str(path) if isinstance(path, Location) else os.path.abspath(path)


def store_around(path) -> Path | None:
    """The fastimg store (complete or unfinished) that the local folder ``path`` is or lies
    in, or None (object storage included): a rebuild of that store would delete it."""
    path = resolve(path)
    if isinstance(path, Location):
        return None
    path = Path(os.path.abspath(path))
    for folder in (path, *path.parents):
        if any(read_attrs(folder, key) is not None for key in (ATTRS_KEY, BUILD_KEY)):
            return folder
    return None


def check_outside_stores(path, *, deleted: str, instead: str) -> None:
    """Refuse ``path`` where it is a fastimg store or lies inside one: a rebuild of the store
    (``--force``, ``relayout``) would delete what is written there.

    Raises
    ------
    StoreError
        One line naming the store, what its rebuild would delete (``deleted``) and what to
        choose ``instead``.
    """
    around = store_around(path)
    if around is not None:
        where = "is" if around == Path(os.path.abspath(path)) else "lies inside"
        raise StoreError(f"{path} {where} the store {around}, whose rebuild would delete "
                         f"{deleted}; choose {instead}")


def is_complete(path) -> bool:
    """True when ``path`` is a finished fastimg store (reads only its metadata)."""
    return bool((read_attrs(readable(path)) or {}).get(COMPLETE))


def recover(path) -> None:
    """Finish or undo a replace that was interrupted (local stores; nothing on object storage).

    A replace moves the old store aside, moves the new one in, then deletes the old one. If
    it stopped after the first step, the old store is moved back; after the second, the old
    one is deleted. Either way ``path`` ends up holding a complete store.
    """
    path = resolve(path)
    if isinstance(path, Location):
        return
    aside = replaced_path(path)
    if not aside.exists():
        return
    if path.exists():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        logger.warning("restoring %s from %s (a replace was interrupted)", path, aside)
        os.replace(aside, path)


def _move(src: Path, dst: Path) -> None:
    os.replace(src, dst)


def replace_with_partial(path) -> None:
    """Move the finished build at ``partial_path(path)`` to ``path``.

    An existing store is moved aside first and deleted last: a crash at any point leaves a
    complete store at ``path`` or at ``replaced_path(path)``, which :func:`recover` (run by
    every writer; readers read the aside copy meanwhile) moves back. On object storage the
    build is already in place.
    """
    path = resolve(path)
    if isinstance(path, Location):
        return
    aside = replaced_path(path)
    recover(path)
    if path.exists():
        _move(path, aside)
    _move(partial_path(path), path)
    shutil.rmtree(aside, ignore_errors=True)


def remove(path) -> None:
    """Delete a store or an unfinished build (nothing if it is absent)."""
    path = resolve(path)
    if isinstance(path, Location):
        fs, root = path.fs()
        with _access(path):
            if fs.exists(root):
                fs.rm(root, recursive=True)
        return
    shutil.rmtree(path, ignore_errors=True)


def size_bytes(path) -> int:
    """Bytes a store takes on disk (every file under it)."""
    path = resolve(path)
    if isinstance(path, Location):
        fs, root = path.fs()
        return int(fs.du(root, total=True))
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def open_group(path, mode: str):
    """The zarr v3 group at ``path``."""
    import zarr

    path = resolve(path)
    if isinstance(path, Location):
        path.fs()  # a missing backend or an unknown option fails here, in one line
        with _access(path):
            return zarr.open_group(path.url, mode=mode, zarr_format=3,
                                   storage_options=path.storage_options or None)
    return zarr.open_group(os.fspath(path), mode=mode, zarr_format=3)
