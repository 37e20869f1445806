"""The clstm model file: a documented, versioned, non-pickle container.

This module knows the file format and its versions, nothing else: the objects
saved (estimator, model, network, optimizer) hand over their own state as
JSON metadata plus named arrays and restore themselves from it; this module
writes and reads those, checks the container, and upgrades older versions.
It imports none of them.

Format ``clstm.estimator``, version 2: a NumPy ``.npz`` archive (a zip of
``.npy`` files, read with ``allow_pickle=False``) holding

* ``__metadata__``: uint8 array of UTF-8 JSON with ``format``,
  ``format_version``, ``clstm_version``, and what the estimator hands over:
  ``estimator`` (class name), ``params`` (``get_params()``; a non-int
  ``random_state`` is stored as null, a ``class_weight`` dict as
  ``{"__dict_items__": [[label, weight], ...]}``), ``fitted`` (scalar fitted
  attributes), ``model`` (``network``: class, ``get_config()`` and the state
  of its dropout generator; ``n_outputs``, ``loss``, ``return_sequences``),
  ``optimizer`` (class, ``config`` with the learning-rate ``schedule``, step
  count ``t``, the schedule's ``epoch`` and ``reductions``; files without
  them load as a constant schedule) and ``rng`` (the
  shuffling RandomState without its key array);
* ``model/network/<torch name>``: network parameters (``weight_ih_l0``, ...);
* ``model/head/weight`` (D*H, n_outputs), ``model/head/bias`` (n_outputs,);
* ``optimizer/<slot>/<parameter>``: optimizer state (Adam's ``m``, ``v``, ...;
  parameters named ``network.<torch name>``, ``head.weight``, ``head.bias``);
* ``scaling/x_mean``, ``scaling/x_scale`` (and ``y_mean``, ``y_scale`` for a
  regressor) when ``standardize=True``;
* ``classes`` (classifier; numeric, bool or unicode labels), ``rng/mt_keys``.

Version 1 (clstm 0.1 development builds) kept the same content under other
names (``lstm/...``, ``head/...``, ``network``/``rng.network`` metadata);
:func:`read` upgrades it.

Files are written atomically: to a temporary file ``.<name>.clstm-<host>-<pid>-<random>.tmp``
in the target directory, flushed and fsynced, then moved over the target
with ``os.replace``. A process killed while writing leaves its temporary file
behind; the next save or load of the same path on the same host removes those
whose process is gone. A corrupt, truncated, foreign or newer-version file
raises ValueError.
"""

import json
import os
import re
import secrets
import socket
import zipfile

import numpy as np

from clstm._version import __version__

__all__ = ["write", "read", "unreadable", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "clstm.estimator"
FORMAT_VERSION = 2

_ZIP_MAGIC = b"PK\x03\x04"


def unreadable(path, why):
    """The error for a file that is not a valid clstm model file."""
    return ValueError(f"{os.fspath(path)!r} is not a readable clstm model file: {why}")


# ----------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------
def write(path, metadata, arrays):
    """Write ``metadata`` (JSON-able dict) and ``arrays`` (name -> ndarray) to ``path``, atomically.

    Any file name is accepted (no extension is added). The directory must exist.
    """
    header = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
              "clstm_version": __version__, **metadata}
    payload = dict(arrays)
    payload["__metadata__"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    write_atomically(path, lambda f: np.savez(f, **payload))


def write_atomically(path, write_to):
    """Call ``write_to(binary_file)`` on a temporary file beside ``path``, then
    replace ``path`` with it: readers see the old file or the whole new one,
    and a failed write leaves the old file. Temporary files of writers on
    this host that were killed are removed first."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot save to {path!r}: the directory {directory!r} does "
                                "not exist")
    _remove_stale_temporaries(path)
    tmp = os.path.join(directory, f"{_temp_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                     0o666)
    except OSError as exc:
        raise type(exc)(exc.errno, f"cannot save to {path!r}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write_to(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _temp_prefix(path):
    host = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname())[:64] or "host"
    return f".{os.path.basename(path)[:100]}.clstm-{host}-"


def _remove_stale_temporaries(path):
    """Delete temporary files of ``path`` left by writers on this host that died."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = _temp_prefix(path)
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        pid = name[len(prefix):-len(".tmp")].split("-")[0]
        if pid.isdigit() and not _process_exists(int(pid)):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


def _process_exists(pid):
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True      # exists (another user's) or cannot tell: keep its file
    return True


# ----------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------
def read(path):
    """(metadata, arrays) of a clstm model file, upgraded to the current format version.

    Raises ValueError (:func:`unreadable`) for anything that is not a clstm
    model file of this or an older version; FileNotFoundError if there is no
    file.
    """
    path = os.fspath(path)
    _remove_stale_temporaries(path)
    with open(path, "rb") as f:
        magic = f.read(len(_ZIP_MAGIC))
    if magic != _ZIP_MAGIC:
        raise unreadable(path, "not a zip (.npz) archive")
    arrays = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                arrays[key] = archive[key]
    except ValueError as exc:
        if "pickle" in str(exc):
            raise unreadable(path, "an entry holds pickled objects, which clstm files never "
                                   "contain") from None
        raise unreadable(path, f"corrupt entry ({exc})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, RuntimeError) as exc:
        raise unreadable(path, f"corrupt or truncated archive ({type(exc).__name__}: "
                               f"{exc})") from None
    if "__metadata__" not in arrays:
        raise unreadable(path, "no __metadata__ entry (not written by clstm's save)")
    raw = arrays.pop("__metadata__")
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise unreadable(path, "__metadata__ is not a byte string")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise unreadable(path, f"metadata is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        found = meta.get("format") if isinstance(meta, dict) else None
        raise unreadable(path, f"format is {found!r}, expected {FORMAT_NAME!r}")
    version = meta.get("format_version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise unreadable(path, f"invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(f"{path!r} was written by a newer clstm ({meta.get('clstm_version')}, "
                         f"format version {version}); this clstm reads format versions up to "
                         f"{FORMAT_VERSION}. Upgrade clstm to load it")
    try:
        while version < FORMAT_VERSION:
            meta, arrays = _UPGRADES[version](meta, arrays)
            version += 1
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise unreadable(path, f"malformed version-{version} content ({type(exc).__name__}: "
                               f"{exc})") from None
    meta["format_version"] = FORMAT_VERSION
    return meta, arrays


def _upgrade_1_to_2(meta, arrays):
    """Version 1 -> 2: per-object sections ("model", "optimizer") and array names."""
    meta = dict(meta)
    net = dict(meta.pop("network"))
    rng = meta.pop("rng")
    model = {"n_outputs": net.pop("n_outputs"), "loss": net.pop("loss"),
             "return_sequences": net.pop("return_sequences")}
    net["n_jobs"] = meta["params"].get("n_jobs")
    model["network"] = {"class": "LSTM", "config": net, "rng_state": rng["network"]}
    meta["model"] = model
    meta["rng"] = {"mt": rng["mt"]}
    opt = meta.pop("optimizer")
    meta["optimizer"] = {"class": opt["kind"], "config": opt["hyper"],
                         "t": opt["scalars"]["t"]}
    renamed = {}
    for key, value in arrays.items():
        if key.startswith("lstm/"):
            key = "model/network/" + key[len("lstm/"):]
        elif key.startswith("head/"):
            key = "model/" + key
        elif key.startswith("optimizer/"):
            key = key.replace("/lstm.", "/network.", 1)
        renamed[key] = value
    return meta, renamed


_UPGRADES = {1: _upgrade_1_to_2}
