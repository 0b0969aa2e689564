"""Plug-in models (ftmpi/model/plugin.py): loading by file path and by module, the contract check (each broken
model is one line naming the file, the class and what was expected), the config keys, and what a checkpoint
keeps of a plug-in model."""
from __future__ import annotations

import json
import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest

from ftmpi.config import config_to_dict, load_config
from ftmpi.errors import CheckpointError, ConfigError
from ftmpi.model.models import Model, build_model, model_key
from ftmpi.model.plugin import PluginModel, load, spec_key

GOOD = '''
import numpy as np

class Softmax:
    """Softmax regression in plain numpy."""

    def __init__(self, n_features, n_classes, scale=0.01):
        self.d, self.k, self.scale = n_features, n_classes, scale
        self.n_params = n_features * n_classes + n_classes

    def init(self, seed):
        rng = np.random.default_rng(seed)
        return (self.scale * rng.standard_normal(self.n_params)).astype(np.float32)

    def _split(self, v):
        return v[: self.d * self.k].reshape(self.d, self.k), v[self.d * self.k:]

    def _probs(self, params, X):
        W, b = self._split(params)
        z = X @ W + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def loss_grad(self, params, X, y, grad):
        p = self._probs(params, X)
        n = len(y)
        loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
        p[np.arange(n), y] -= 1.0
        p /= n
        gW, gb = self._split(grad)
        gW[...] = X.T @ p
        gb[...] = p.sum(axis=0)
        return float(loss)

    def predict(self, params, X):
        W, b = self._split(params)
        return np.argmax(X @ W + b, axis=1)

    def sample_loss(self, params, X, y):
        p = self._probs(params, X)
        return -np.log(p[np.arange(len(y)), y] + 1e-12).astype(np.float32)
'''


@pytest.fixture(autouse=True)
def _forget_imported_models():
    """Every test imports its own model files: leave sys.modules as it was."""
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        del sys.modules[name]


def model_file(tmp_path: Path, extra: str = "", name: str = "my_model.py") -> Path:
    p = tmp_path / name
    p.write_text(GOOD + textwrap.dedent(extra))
    return p


def error_of(spec: str, options: dict | None = None, scored: bool = False, d: int = 6, k: int = 3) -> str:
    with pytest.raises(ConfigError) as info:
        load(spec, options or {}, d, k, scored=scored)
    msg = str(info.value)
    assert "\n" not in msg, "errors must be one line"
    assert msg.startswith(f"model.type {spec}: "), msg
    return msg


# ------------------------------------------------------------------------------------------------ loading
def test_a_good_model_by_path_is_bound_to_the_contract(tmp_path):
    p = model_file(tmp_path)
    m = load(f"{p}:Softmax", {"scale": 0.1}, 6, 3, seed=4)
    assert isinstance(m, PluginModel) and m.n_params == 21 and m.sizes.tolist() == [6, 3]
    assert m.obj.scale == 0.1 and m.tensors() == [slice(0, 21)]
    assert m.key == spec_key(f"{p}:Softmax", {"scale": 0.1})
    assert json.loads(m.key) == {"type": f"{p}:Softmax", "options": {"scale": 0.1}}
    w = m.init(4)
    assert w.dtype == np.float32 and w.shape == (21,)
    rng = np.random.default_rng(0)
    X, y = rng.random((3000, 6), dtype=np.float32), rng.integers(0, 3, 3000).astype(np.int32)
    # predict and sample_loss are chunked: the same answer as one call on all rows
    assert np.array_equal(m.predict(w, X), m.obj.predict(w, X))
    assert np.allclose(m.sample_loss(w, X, y), m.obj.sample_loss(w, X, y))
    acc, per = m.evaluate(w, X, y, 3)
    assert acc == pytest.approx(float(np.mean(m.obj.predict(w, X) == y))) and per.shape == (3,)
    g = np.zeros(21, np.float32)
    assert m.loss_grad(w, X[:5], y[:5], g) > 0 and np.any(g != 0)


def test_the_same_file_is_imported_once_under_its_own_name(tmp_path):
    """numba's cache finds a kernel's module by name: a model file gets its stem as its name (what a user
    imports it by), and one module per process."""
    # a stem no other test (in this process) has imported: the suite's other tests load their own my_model.py
    stem = f"own_model_{uuid.uuid4().hex[:8]}"
    p = model_file(tmp_path, name=f"{stem}.py")
    a = load(f"{p}:Softmax", {}, 6, 3)
    b = load(f"{p}:Softmax", {}, 6, 3, check=False)
    assert type(a.obj) is type(b.obj) and type(a.obj).__module__ == stem
    other = tmp_path / "other"
    other.mkdir()
    q = model_file(other, name=f"{stem}.py")  # another file of the same name: another module, not the first one again
    c = load(f"{q}:Softmax", {}, 6, 3)
    assert type(c.obj) is not type(a.obj) and type(c.obj).__module__ != stem
    json_named = model_file(tmp_path, name="json.py")  # a name taken by another module keeps it intact
    assert type(load(f"{json_named}:Softmax", {}, 6, 3).obj).__module__ != "json"
    assert sys.modules["json"].__file__ != str(json_named)


def test_a_model_by_module_on_the_python_path(tmp_path, monkeypatch):
    pkg = tmp_path / "mymodels"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "linear.py").write_text(GOOD)
    monkeypatch.syspath_prepend(str(tmp_path))
    m = build_model("mymodels.linear:Softmax", (), 6, 3, {"scale": 0.5})
    assert isinstance(m, PluginModel) and m.obj.scale == 0.5 and model_key(m)
    assert "importing module nosuch.pkg raised ModuleNotFoundError" in error_of("nosuch.pkg:Model")
    assert "module mymodels.linear defines no class Nope" in error_of("mymodels.linear:Nope")


def test_built_in_models_are_unchanged():
    m = build_model("mlp", (4,), 6, 3, {"ignored": 1})
    assert type(m) is Model and m.sizes.tolist() == [6, 4, 3] and model_key(m) == ""
    assert type(build_model("logreg", (4,), 6, 3)) is Model


# ------------------------------------------------------------------------------------------- the contract
BROKEN = [
    ("raise_at_import", "raise RuntimeError('no GPU here')\n", "Softmax",
     "importing {path} raised RuntimeError: no GPU here"),
    ("syntax", "def broken(:\n", "Softmax", "importing {path} raised SyntaxError"),
    ("no_class", "", "Missing", "{path} defines no class Missing"),
    ("ctor_raises", """
        class Bad(Softmax):
            def __init__(self, n_features, n_classes, depth):
                super().__init__(n_features, n_classes)
        """, "Bad", "Bad(n_features=6, n_classes=3) raised TypeError"),
    ("no_predict", """
        class Bad:
            def __init__(self, n_features, n_classes):
                self.n_params = 3
            def init(self, seed): ...
            def loss_grad(self, params, X, y, grad): ...
        """, "Bad", "Bad lacks predict; expected n_params, init(seed), loss_grad(params, X, y, grad) and predict"),
    ("n_params_float", """
        class Bad(Softmax):
            def __init__(self, n_features, n_classes):
                super().__init__(n_features, n_classes)
                self.n_params = 21.0
        """, "Bad", "Bad.n_params is 21.0; expected an integer >= 1"),
    ("init_float64", """
        class Bad(Softmax):
            def init(self, seed):
                return np.zeros(self.n_params)
        """, "Bad", "Bad.init(seed) returned float64 (21,); expected a float32 vector of shape (n_params,) = (21,)"),
    ("init_shape", """
        class Bad(Softmax):
            def init(self, seed):
                return np.zeros((self.d, self.k), np.float32)
        """, "Bad", "Bad.init(seed) returned float32 (6, 3); expected a float32 vector of shape (n_params,) = (21,)"),
    ("init_nan", """
        class Bad(Softmax):
            def init(self, seed):
                w = super().init(seed)
                w[3] = np.nan
                return w
        """, "Bad", "Bad.init(seed) returned 1 non-finite value(s); expected finite parameters"),
    ("loss_nan", """
        class Bad(Softmax):
            def loss_grad(self, params, X, y, grad):
                super().loss_grad(params, X, y, grad)
                return float("nan")
        """, "Bad", "loss_grad(params, X, y, grad) returned nan on 8 random rows at init; expected a finite mean loss"),
    ("loss_not_a_number", """
        class Bad(Softmax):
            def loss_grad(self, params, X, y, grad):
                super().loss_grad(params, X, y, grad)
                return None
        """, "Bad", "loss_grad(params, X, y, grad) returned NoneType; expected the mean loss as a number"),
    ("grad_not_written", """
        class Bad(Softmax):
            def loss_grad(self, params, X, y, grad):
                g = np.zeros_like(grad)
                return super().loss_grad(params, X, y, g)   # writes a copy, not grad
        """, "Bad",
     "left 21 of 21 gradient entries unwritten or non-finite; expected it to write the whole float32 grad"),
    ("grad_partly_written", """
        class Bad(Softmax):
            def loss_grad(self, params, X, y, grad):
                g = np.zeros_like(grad)
                loss = super().loss_grad(params, X, y, g)
                grad[:18] = g[:18]                           # forgets the biases
                return loss
        """, "Bad", "left 3 of 21 gradient entries unwritten"),
    ("params_changed", """
        class Bad(Softmax):
            def loss_grad(self, params, X, y, grad):
                loss = super().loss_grad(params, X, y, grad)
                params -= 0.1 * grad                         # an optimizer step of its own
                return loss
        """, "Bad", "loss_grad(params, X, y, grad) changed params; expected it to write the gradient into grad only"),
    ("loss_grad_raises", """
        class Bad(Softmax):
            def loss_grad(self, params, X, y, grad):
                return X.reshape(-1, 5)
        """, "Bad", "Bad.loss_grad(params, X, y, grad) raised ValueError"),
    ("predict_floats", """
        class Bad(Softmax):
            def predict(self, params, X):
                return np.zeros(len(X))
        """, "Bad", "predict(params, X) returned float64 (8,) for 8 rows; expected integer labels of shape (8,)"),
    ("predict_out_of_range", """
        class Bad(Softmax):
            def predict(self, params, X):
                return super().predict(params, X) + 3
        """, "Bad", "predict(params, X) returned labels in [{lo}, 5]; expected labels in [0, 3)"),
    ("sample_loss_shape", """
        class Bad(Softmax):
            def sample_loss(self, params, X, y):
                return np.zeros((len(y), 1), np.float32)
        """, "Bad",
     "sample_loss(params, X, y) returned float32 (8, 1) for 8 rows; expected float losses of shape (8,)"),
    ("tensors_gap", """
        class Bad(Softmax):
            def tensors(self):
                return [slice(0, 18), slice(19, 21)]
        """, "Bad", "Bad.tensors() returned [slice(0, 18, None), slice(19, 21, None)]; expected slices in order"),
    ("tensors_short", """
        class Bad(Softmax):
            def tensors(self):
                return [slice(0, 18)]
        """, "Bad", "Bad.tensors() covers 0..18; expected slices that cover 0..n_params=21"),
]


@pytest.mark.parametrize("name, extra, cls, expected", BROKEN, ids=[b[0] for b in BROKEN])
def test_a_model_that_breaks_the_contract_is_one_line_naming_file_class_and_expectation(tmp_path, name, extra,
                                                                                      cls, expected):
    p = model_file(tmp_path, extra, name=f"{name}.py")
    msg = error_of(f"{p}:{cls}")
    assert str(p) in msg and cls in msg, msg
    lo = msg.partition("labels in [")[2].partition(",")[0]
    assert expected.format(path=p, lo=lo) in msg, msg


def test_a_missing_file_and_a_bad_spec(tmp_path):
    assert f"no such file {tmp_path / 'nope.py'}" in error_of(f"{tmp_path / 'nope.py'}:Model")
    with pytest.raises(ConfigError, match="expected path/to/file.py:ClassName or package.module:ClassName"):
        load(f"{tmp_path}/x.py:not-a-name", {}, 6, 3)


def test_loss_based_selection_needs_sample_loss(tmp_path):
    p = model_file(tmp_path, """
        class NoScores(Softmax):
            sample_loss = None
        """)
    msg = error_of(f"{p}:NoScores", scored=True)
    assert "NoScores.sample_loss(params, X, y) is missing; optimizer.rep_selection loss and stratified need it" in msg
    m = load(f"{p}:NoScores", {}, 6, 3)  # random selection (the default) never scores
    assert not m.has_sample_loss
    with pytest.raises(ConfigError, match="has no sample_loss"):
        m.sample_loss(m.init(0), np.zeros((2, 6), np.float32), np.zeros(2, np.int32))


def test_the_check_can_be_skipped_by_a_worker(tmp_path):
    """Rank 0 checks; a worker only constructs (the same class, the same options)."""
    p = model_file(tmp_path, """
        class Bad(Softmax):
            def init(self, seed):
                return np.zeros(self.n_params)
        """)
    assert load(f"{p}:Bad", {}, 6, 3, check=False).n_params == 21
    error_of(f"{p}:Bad")


# -------------------------------------------------------------------------------------------------- config
def test_config_resolves_a_file_relative_to_the_config_and_keeps_options(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    cfg_file = tmp_path / "conf" / "run.yaml"
    cfg_file.write_text("model:\n  type: ../models/cnn.py:Net\n  options: {width: 8, layers: [3, 5]}\n")
    monkeypatch.chdir(tmp_path / "conf")
    cfg = load_config(cfg_file.relative_to(tmp_path / "conf"), env={})
    assert cfg.model.type == f"{tmp_path / 'models' / 'cnn.py'}:Net"
    assert cfg.model.options == {"width": 8, "layers": [3, 5]}
    assert config_to_dict(cfg)["model"]["options"] == {"width": 8, "layers": [3, 5]}
    monkeypatch.chdir(tmp_path)  # --set is relative to the current directory; a module stays a module
    assert load_config(None, ["model.type=m.py:Net"], env={}).model.type == f"{tmp_path / 'm.py'}:Net"
    assert load_config(None, ["model.type=pkg.mod:Net"], env={}).model.type == "pkg.mod:Net"
    # the resolved config loads back to itself (config.yaml, a checkpoint's config)
    again = tmp_path / "again.yaml"
    import yaml

    again.write_text(yaml.safe_dump(config_to_dict(cfg)))
    assert load_config(again, env={}).model == cfg.model


@pytest.mark.parametrize("override, expected", [
    ("model.type=cnn", "--set: model.type: expected logreg, mlp, or a plug-in model path/to/file.py:ClassName or "
                       "package.module:ClassName, got 'cnn'"),
    ("model.type=m.py:", "--set: model.type: expected logreg, mlp, or a plug-in model"),
    ("model.options=[1, 2]", "--set: model.options: expected a mapping of keyword arguments of the plug-in "
                             "model's constructor, got [1, 2]"),
])
def test_bad_model_keys_are_one_line(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override], env={})
    assert str(info.value).startswith(expected) and "\n" not in str(info.value)


def test_options_of_a_built_in_model_are_refused():
    with pytest.raises(ConfigError, match=r"^--set: model.options: only a plug-in model takes options"):
        load_config(None, ["model.type=mlp", "model.options={width: 3}"], env={})


# ---------------------------------------------------------------------------------------------- checkpoint
def _global_model(tmp_path, spec_options: dict, *extra: str):
    from ftmpi.coordinator.globalmodel import GlobalModel
    from ftmpi.storage.data import Dataset

    p = model_file(tmp_path)
    cfg = load_config(None, [f"model.type={p}:Softmax", f"model.options={json.dumps(spec_options)}", *extra],
                      env={})
    rng = np.random.default_rng(0)
    data = Dataset("synthetic", rng.random((40, 6), dtype=np.float32), rng.integers(0, 3, 40),
                   rng.random((10, 6), dtype=np.float32), rng.integers(0, 3, 10), 3, list(range(3)), "test")
    return GlobalModel(cfg, data)


def test_a_checkpoint_keeps_a_plug_in_model_and_refuses_another(tmp_path):
    from ftmpi.storage.checkpoint import load as load_ckpt
    from ftmpi.storage.checkpoint import save, summarize
    from tests.unit.test_checkpoint import make_snapshot

    gm = _global_model(tmp_path, {"scale": 0.5})
    assert isinstance(gm.model, PluginModel) and gm.W.shape == (21,)
    fields = gm.checkpoint_fields()
    assert fields["model"] == gm.model.key and fields["sizes"].tolist() == [6, 3]
    snap = make_snapshot(sizes=(6, 3))
    for k, v in fields.items():
        setattr(snap, k, v)
    snap.params = np.arange(21, dtype=np.float32)
    snap.optim = {"name": "sgd", "m": np.zeros(21, np.float32), "v": np.zeros(0, np.float32), "step": 0}
    path = save(tmp_path / "ckpt" / "round-000010.h5", snap)
    back = load_ckpt(path)
    assert back.model == gm.model.key and np.array_equal(back.params, snap.params)
    s = summarize(path)
    assert s["model"] == gm.model.key and s["tensors"][0]["name"] == "params" and s["tensors"][0]["shape"] == [21]
    import h5py

    with h5py.File(path) as f:  # flat, with the spec beside it
        assert "params" in f["model"] and "layer0" not in f["model"] and f["model"].attrs["spec"] == gm.model.key
    gm.restore(back)
    assert np.array_equal(gm.W, snap.params)
    other = _global_model(tmp_path, {"scale": 0.25})  # the same file, other options
    with pytest.raises(CheckpointError) as info:
        other.restore(back)
    assert "\n" not in str(info.value) and "the checkpoint holds model" in str(info.value)
    assert '"scale": 0.5' in str(info.value) and '"scale": 0.25' in str(info.value)
    builtin = make_snapshot(sizes=(6, 3))  # a softmax regression's checkpoint: same sizes, another model
    with pytest.raises(CheckpointError, match="the checkpoint holds model built-in"):
        gm.restore(builtin)
