"""save / load: the file format, what load checks, and what save leaves behind."""

import copy
import json
import os
import select
import signal
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import clstm
from clstm import LSTMClassifier, LSTMRegressor

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

TINY = dict(hidden_size=4, max_iter=2, random_state=0)
UNREADABLE = "is not a readable clstm model file"


def _data(n=30, T=5, F=2, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, T, F))
    return X, X[:, 0, 0] - X[:, -1, 1]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A fitted regressor and classifier, each saved: (estimator, metadata, arrays, X)."""
    X, y = _data()
    out = {}
    for name, est, target in (("reg", LSTMRegressor(**TINY), y),
                              ("clf", LSTMClassifier(**TINY), np.digitize(y, [-0.5, 0.5]))):
        est.fit(X, target)
        path = tmp_path_factory.mktemp(name) / "model.clstm"
        est.save(path)
        out[name] = (est,) + _read(path) + (X,)
    return out


def _read(path):
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__metadata__").tobytes())
    return meta, arrays


def _write(path, meta, arrays):
    blob = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    with open(path, "wb") as f:        # (np.savez would add .npz to a name)
        np.savez(f, __metadata__=blob, **arrays)
    return path


def _predictions(est, X):
    if isinstance(est, LSTMClassifier):
        return est.predict_proba(X)
    return np.ravel(est.predict(X))


# ----------------------------------------------------------------------------
# load checks every array and every recorded size
# ----------------------------------------------------------------------------
def test_nan_head_weights_are_refused(saved, tmp_path):
    """The issue's case: NaN head weights loaded and every prediction was NaN."""
    _, meta, arrays, _ = saved["reg"]
    arrays = dict(arrays)
    arrays["model/head/weight"] = arrays["model/head/weight"].copy()
    arrays["model/head/weight"][0, 0] = np.nan
    with pytest.raises(ValueError, match=f"{UNREADABLE}: head weight contains NaN"):
        clstm.load(_write(tmp_path / "nan.clstm", meta, arrays))


def test_recorded_feature_count_must_match_the_weights(saved, tmp_path):
    """The issue's case: the file loaded and predict failed with a broadcast error."""
    _, meta, arrays, _ = saved["reg"]
    meta = copy.deepcopy(meta)
    meta["fitted"]["n_features_in_"] = 3
    meta["fitted"]["input_size_"] = 3
    with pytest.raises(ValueError, match=f"{UNREADABLE}: fitted attribute input_size_ is 3"):
        clstm.load(_write(tmp_path / "features.clstm", meta, arrays))


def _leaves(node, path=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, path + (k,))
    else:
        yield path, node


def _set(meta, path, value):
    node = meta
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value


def _replacements(value):
    if isinstance(value, bool):
        return [not value, "yes", None]
    if isinstance(value, int):
        return [value + 1, value - 1, 0, -1, 2.5, "1", None]
    if isinstance(value, float):
        return [value * 2 + 1, -value, 0.0, float("inf"), "x", None]
    if isinstance(value, str):
        return ["", "LSTMRegressor", "float64", "log_loss", "3d", None, 1]
    if isinstance(value, list):
        return [[], value + value[-1:], [None] * len(value), "x"]
    return ["x", 1]


@pytest.mark.parametrize("kind", ["reg", "clf"])
@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_changed_metadata_is_refused_or_harmless(saved, tmp_path, kind, data):
    """A file whose metadata was changed anywhere either fails to load with a
    clear error or loads into an estimator that predicts exactly as the
    original: load never returns a model that fails or differs later."""
    est, meta, arrays, X = saved[kind]
    leaves = list(_leaves(meta))
    path, value = data.draw(st.sampled_from(leaves))
    new = data.draw(st.sampled_from(_replacements(value)))
    changed = copy.deepcopy(meta)
    _set(changed, path, new)
    file = _write(tmp_path / "changed.clstm", changed, arrays)
    try:
        loaded = clstm.load(file)
    except ValueError as exc:
        assert UNREADABLE in str(exc) or "newer clstm" in str(exc)
        return
    np.testing.assert_array_equal(_predictions(loaded, X), _predictions(est, X),
                                  err_msg=f"{path} = {new!r}")


@pytest.mark.parametrize("kind", ["reg", "clf"])
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_damaged_array_is_refused(saved, tmp_path, kind, data):
    """Every array is checked: a non-finite value, a wrong shape or a missing
    array makes load fail with a clear error (an extra array is ignored)."""
    est, meta, arrays, X = saved[kind]
    key = data.draw(st.sampled_from(sorted(arrays)))
    how = data.draw(st.sampled_from(["nan", "shape", "missing", "transpose"]))
    value = arrays[key]
    damaged = dict(arrays)
    if how == "nan":
        if value.dtype.kind != "f":
            how = "shape"
        else:
            damaged[key] = value.copy()
            damaged[key].flat[data.draw(st.integers(0, value.size - 1))] = np.nan
    if how == "shape":
        damaged[key] = value[:-1] if value.ndim else value[None]
    elif how == "missing":
        del damaged[key]
    elif how == "transpose":
        if value.ndim < 2 or value.shape[0] == value.shape[1]:
            damaged[key] = np.concatenate([value.ravel(), value.ravel()[:1]])
        else:
            damaged[key] = np.ascontiguousarray(value.T)
    with pytest.raises(ValueError, match=UNREADABLE):
        clstm.load(_write(tmp_path / "damaged.clstm", meta, damaged))
    extra = dict(arrays, **{"notes/extra": np.arange(3)})
    np.testing.assert_array_equal(
        _predictions(clstm.load(_write(tmp_path / "extra.clstm", meta, extra)), X),
        _predictions(est, X))


def test_random_bytes_and_pickles_get_a_clstm_message(tmp_path):
    rng = np.random.default_rng(0)
    for name, content in (("random", rng.bytes(2000)), ("empty", b""),
                          ("zip-ish", b"PK\x03\x04" + rng.bytes(500))):
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ValueError, match=UNREADABLE) as info:
            clstm.load(tmp_path / name)
        assert "allow_pickle" not in str(info.value)
    np.savez(tmp_path / "pickled.npz", __metadata__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError, match=f"{UNREADABLE}: .*pickled objects") as info:
        clstm.load(tmp_path / "pickled.npz")
    assert "allow_pickle" not in str(info.value)
    with pytest.raises(FileNotFoundError):
        clstm.load(tmp_path / "absent.clstm")


def test_version_1_files_still_load(saved, tmp_path):
    """Files of format version 1 (the layout before each object saved itself)."""
    for kind in ("reg", "clf"):
        est, meta, arrays, X = saved[kind]
        old = _write(tmp_path / f"{kind}-v1.clstm", *_as_version_1(meta, arrays))
        loaded = clstm.load(old)
        np.testing.assert_array_equal(_predictions(loaded, X), _predictions(est, X))
        y = est.predict(X)
        a = copy.deepcopy(est).set_params(warm_start=True).fit(X, y)
        b = loaded.set_params(warm_start=True).fit(X, y)
        np.testing.assert_array_equal(_predictions(a, X), _predictions(b, X))


def _as_version_1(meta, arrays):
    """The version-1 layout of a version-2 file (as clstm 0.1.0.dev0 wrote it)."""
    meta = copy.deepcopy(meta)
    model = meta.pop("model")
    config = dict(model["network"]["config"])
    config.pop("n_jobs")
    meta["network"] = {**config, "n_outputs": model["n_outputs"], "loss": model["loss"],
                       "return_sequences": model["return_sequences"]}
    opt = meta.pop("optimizer")
    meta["optimizer"] = {"kind": opt["class"], "hyper": opt["config"],
                         "scalars": {"t": opt["t"],
                                     "learning_rate": opt["config"]["learning_rate_init"]}}
    meta["rng"] = {"mt": meta["rng"]["mt"], "network": model["network"]["rng_state"]}
    meta["format_version"] = 1
    renamed = {}
    for key, value in arrays.items():
        key = key.replace("model/network/", "lstm/").replace("model/head/", "head/")
        renamed[key.replace("/network.", "/lstm.")] = value
    return meta, renamed


# ----------------------------------------------------------------------------
# what save leaves behind
# ----------------------------------------------------------------------------
def test_saving_into_a_missing_directory_names_the_users_path(tmp_path):
    X, y = _data()
    reg = LSTMRegressor(**TINY).fit(X, y)
    target = tmp_path / "no" / "such" / "model.clstm"
    with pytest.raises(FileNotFoundError) as info:
        reg.save(target)
    assert str(target) in str(info.value) and ".tmp" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


_KILLED_SAVER = r"""
import os, sys, time
import numpy as np
from clstm import LSTMRegressor

X = np.random.default_rng(1).normal(size=(20, 4, 1))
est = LSTMRegressor(hidden_size=4, max_iter=1, random_state=1).fit(X, X[:, 0, 0])


def stall(src, dst):          # the temporary file is written and fsynced
    print("written", flush=True)
    time.sleep(120)


os.replace = stall
est.save(sys.argv[1])
"""


@pytest.mark.parametrize("then", ["save", "load"])
def test_a_save_killed_by_sigkill_leaves_no_temporary_file(tmp_path, then):
    """The issue's case: each killed save left its (large) temporary file behind.
    The old file stays intact, and the next save or load of that path removes
    the dead writer's temporary file."""
    X, y = _data()
    reg = LSTMRegressor(**TINY).fit(X, y)
    path = tmp_path / "model.clstm"
    reg.save(path)
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVER, str(path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120)
        assert ready and proc.stdout.readline().strip() == "written"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    left = [p.name for p in tmp_path.iterdir() if p != path]
    assert len(left) == 1 and left[0].endswith(".tmp")        # what the kill left
    if then == "save":
        reg.save(path)
    np.testing.assert_array_equal(clstm.load(path).predict(X), reg.predict(X))
    assert list(tmp_path.iterdir()) == [path]


def test_a_live_writers_temporary_file_is_kept(tmp_path):
    """Only the files of writers that are gone are removed (not a concurrent save's)."""
    X, y = _data()
    reg = LSTMRegressor(**TINY).fit(X, y)
    path = tmp_path / "model.clstm"
    reg.save(path)
    from clstm._persistence import _temp_prefix

    live = tmp_path / f"{_temp_prefix(path)}{os.getppid()}-abcd.tmp"
    other = tmp_path / ".other.clstm.clstm-elsewhere-1-abcd.tmp"
    live.write_bytes(b"x")
    other.write_bytes(b"x")
    reg.save(path)
    clstm.load(path)
    assert live.exists() and other.exists()


def test_saved_files_are_not_private_to_the_owner(tmp_path):
    X, y = _data()
    path = tmp_path / "model.clstm"
    LSTMRegressor(**TINY).fit(X, y).save(path)
    mask = os.umask(0)
    os.umask(mask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~mask


# ----------------------------------------------------------------------------
# the file-format module stands alone
# ----------------------------------------------------------------------------
def test_the_file_format_module_imports_no_estimator_model_or_optimizer():
    """No import of the objects it saves, not even inside a function (the old
    hidden circle: estimators -> _base -> _persistence -> estimators)."""
    import ast

    import clstm._persistence as module

    tree = ast.parse(open(module.__file__).read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert {m for m in imported if m.startswith("clstm")} <= {"clstm._version"}
    code = ("import sys, clstm._persistence; "
            "print(' '.join(sorted(m for m in sys.modules if m.startswith('clstm'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.split()
    for name in ("clstm._base", "clstm._estimators", "clstm._model", "clstm._optimizers"):
        assert name not in loaded
