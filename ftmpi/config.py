"""Configuration: YAML file -> frozen dataclasses, validated once, at load.

Each key takes the first value found in this order: a ``--set section.key=value`` override, the YAML file,
the environment variable ``FTMPI_<SECTION>_<KEY>`` (``FTMPI_NAME``/``FTMPI_FAULTS`` for the top-level
keys), then the default written on the dataclass field below. Override and environment values are read as
YAML scalars or lists, so ``--set model.hidden=[64,32]`` and ``FTMPI_EXECUTOR_TIMEOUT=5`` both work.

Every problem is raised as a one-line :class:`~ftmpi.errors.ConfigError` that names where the value came
from (file, ``--set`` or the variable), the key path and what was expected. Keys of the original system
(``executor.strategy``, ``executor.aggregate_mode``, numeric ``executor.remap`` and ``executor.scenario``)
are accepted and mapped; each adds one line to ``Config.warnings`` instead of printing, so the caller
decides where warnings go (rank 0 only, usually).

The YAML reader differs from ``yaml.safe_load`` in two ways: ``1e-8`` is a float (YAML 1.1 would read
it as a string, a classic trap for ``eps``), and a key repeated within one mapping is an error rather
than a silent overwrite.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ftmpi.errors import ConfigError
from ftmpi.storage.fsutil import replace_atomic

# Names of ftmpi.core.weighting's rules and selections, here so that loading a config imports no numpy (the
# launcher loads it before mpirun starts).
RULES = ("one", "shard", "shard-legacy", "damped", "sqrt", "classmix")  # optimizer.rep_weight
SCORED = ("loss", "stratified")  # selections the workers make by scoring their rows (biased)
SELECTIONS = ("random", "coreset") + SCORED  # optimizer.rep_selection; random and coreset are rank 0's
USER_FORMATS = ("hdf5", "npz", "csv")  # data.dataset values that name a file of the user's (data.path)

__all__ = [
    "Config", "DataConfig", "ExecutorConfig", "FaultSpec", "ModelConfig", "OptimizerConfig",
    "config_to_dict", "dump_config", "load_config", "parse_fault", "wait_parts",
]


class _Bad(Exception):
    """A value failed its check; the message says what was expected."""


def _close(word: str, options: Sequence[str], n: int, cutoff: float) -> list[str]:
    """difflib's close matches, for "did you mean" hints (imported only when a key is wrong)."""
    import difflib

    return difflib.get_close_matches(word, options, n, cutoff)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(lo: int, hi: int | None = None) -> Callable[[Any], int]:
    desc = f"an integer >= {lo}" if hi is None else f"an integer in [{lo}, {hi}]"

    def check(v: Any) -> int:
        if not _is_int(v) or v < lo or (hi is not None and v > hi):
            raise _Bad(desc)
        return int(v)
    return check


def _num(lo: float, hi: float | None = None, lo_open: bool = False, hi_open: bool = False
         ) -> Callable[[Any], float]:
    if hi is None:
        desc = f"a number {'>' if lo_open else '>='} {lo:g}"
    else:
        desc = f"a number in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"

    def check(v: Any) -> float:
        ok = _is_num(v) and (v > lo if lo_open else v >= lo)
        if ok and hi is not None:
            ok = v < hi if hi_open else v <= hi
        if not ok:
            raise _Bad(desc)
        return float(v)
    return check


def _typed(ok: Callable[[Any], bool], desc: str) -> Callable[[Any], Any]:
    def check(v: Any) -> Any:
        if not ok(v):
            raise _Bad(desc)
        return v
    return check


_bool = _typed(lambda v: isinstance(v, bool), "true or false")
_str = _typed(lambda v: isinstance(v, str), "a string")
_nonempty_str = _typed(lambda v: isinstance(v, str) and bool(v.strip()), "a non-empty string")
_opt_str = _typed(lambda v: v is None or isinstance(v, str), "a string or null")


def _run_name(v: Any) -> str:
    """``name``: it becomes a path component of the run dir (``executor.shared_folder``'s ``{name}``), which
    ``--overwrite`` deletes under, so it must not lead out of the folder it is put in."""
    if not isinstance(v, str) or not v.strip():
        raise _Bad("a non-empty string")
    if "/" in v or "\0" in v or v in (".", ".."):
        raise _Bad("a plain name for the run dir (no '/', not '.' or '..': it must not lead out of "
                   "executor.shared_folder)")
    return v


def _choice(*options: str) -> Callable[[Any], str]:
    return _typed(lambda v: isinstance(v, str) and v in options, "one of " + ", ".join(options))


def _hidden(v: Any) -> tuple[int, ...]:
    if _is_int(v):  # a single layer given as a scalar, e.g. --set model.hidden=64
        v = [v]
    if not isinstance(v, (list, tuple)) or not all(_is_int(h) and h >= 1 for h in v):
        raise _Bad("a list of integers >= 1")
    return tuple(int(h) for h in v)


def _n_most_rep(v: Any) -> int | float:
    if _is_int(v) and v >= 0:
        return int(v)
    if isinstance(v, float) and 0.0 < v < 1.0:
        return v
    raise _Bad("an integer >= 0 (a count) or a number in (0, 1) (a fraction of the shard)")


def _target(v: Any) -> float | None:
    if v is None:
        return None
    if not (_is_num(v) and 0 < v <= 1):
        raise _Bad("null (off) or a test accuracy in (0, 1]")
    return float(v)


def wait_parts(v: Any) -> tuple[float, bool]:
    """``executor.straggler_wait`` as ``(amount, relative)``: a number of seconds >= 0 (``relative`` False), or
    ``"Nx"``: N >= 0 times the median reply time of the round. Raises ValueError otherwise."""
    if _is_num(v) and v >= 0:
        return float(v), False
    if isinstance(v, str) and v.strip().lower().endswith("x"):
        try:
            k = float(v.strip()[:-1])
        except ValueError:
            k = math.nan
        if math.isfinite(k) and k >= 0:
            return k, True
    raise ValueError("a number of seconds >= 0, or 'Nx': N >= 0 times the median reply time (e.g. '0.5x')")


def _straggler_wait(v: Any) -> float | str:
    try:
        amount, relative = wait_parts(v)
    except ValueError as exc:
        raise _Bad(str(exc)) from None
    return f"{amount:g}x" if relative else amount


def _f(default: Any, check: Callable[[Any], Any]) -> Any:
    return field(default=default, metadata={"check": check})


def _model_type(v: Any) -> str:
    """``logreg``, ``mlp``, or a plug-in class: ``path/to/file.py:ClassName`` or ``package.module:ClassName``
    (imported and checked by rank 0 at start-up, :mod:`ftmpi.model.plugin`)."""
    if isinstance(v, str) and v in ("logreg", "mlp"):
        return v
    if isinstance(v, str) and ":" in v:
        where, _, name = v.rpartition(":")
        if where.strip() and name.isidentifier():
            return v
    raise _Bad("logreg, mlp, or a plug-in model path/to/file.py:ClassName or package.module:ClassName")


def _plugin_path(kind: str, where: str, source: str | None) -> str:
    """A plug-in's ``file.py:Class`` with the file made absolute: relative to the config file's folder when the
    config file set it, else to the current directory; ``module:Class`` as it is. Every rank, the run's
    config.yaml and its checkpoints then name the same file, whatever directory they are read from."""
    path, _, name = kind.rpartition(":")
    if not (path.endswith(".py") or "/" in path or os.sep in path):
        return kind
    path = os.path.expanduser(path)
    base = os.path.dirname(os.path.abspath(source)) if source is not None and where == source else os.getcwd()
    return f"{os.path.normpath(os.path.join(base, path))}:{name}"


def _options(v: Any) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(k, str) and k.isidentifier() for k in v):
        raise _Bad("a mapping of keyword arguments of the plug-in model's constructor")
    return dict(v)


@dataclass(frozen=True)
class ModelConfig:
    """Model shape and the local training loop of each worker."""

    type: str = _f("logreg", _model_type)
    # keyword arguments of a plug-in model's constructor (model.type file.py:Class or module:Class)
    options: dict[str, Any] = field(default_factory=dict, metadata={"check": _options})
    hidden: tuple[int, ...] = _f((128,), _hidden)
    n_iterations: int = _f(300, _int(1))  # total local iterations per worker
    batch_size: int = _f(128, _int(1))
    shuffle: bool = _f(True, _bool)
    seed: int = _f(0, _int(0))


@dataclass(frozen=True)
class OptimizerConfig:
    """Local optimizer, pull towards the global model, representative selection and clipping."""

    name: str = _f("sgd", _choice("sgd", "adam"))
    learning_rate: float = _f(0.05, _num(0, lo_open=True))
    lr_schedule: str = _f("constant", _choice("constant", "cosine", "linear"))  # over n_iterations
    mu_g: float = _f(0.0, _num(0))
    n_most_rep: int | float = _f(0.05, _n_most_rep)  # int = a count, float in (0, 1) = a fraction
    # random: rank 0's draw, staged ahead; coreset: rank 0's per-class k-means++ on the features at the loss;
    # loss / stratified: the workers' own scoring (the original system's rule; biased). See
    # benchmarks/results/handoff_value.md
    rep_selection: str = _f("random", _choice(*SELECTIONS))
    # the handed rows' weights (ftmpi/core/weighting.py: one, shard, damped, sqrt, classmix; shard-legacy = a
    # uniform draw, the study's baseline only). classmix (the default): every class keeps its share of the
    # objective, as good as shard (unbiased) on label skew without shard's iid cost; biased under feature skew
    # (benchmarks/results/handoff_value.md)
    rep_weight: str = _f("classmix", _choice(*RULES))
    clip_norm: float = _f(0.0, _num(0))  # 0 = off
    clip_val: float = _f(0.0, _num(0))  # 0 = off
    momentum: float = _f(0.0, _num(0, 1, hi_open=True))
    beta1: float = _f(0.9, _num(0, 1, hi_open=True))
    beta2: float = _f(0.999, _num(0, 1, hi_open=True))
    eps: float = _f(1e-8, _num(0, lo_open=True))


@dataclass(frozen=True)
class ExecutorConfig:
    """How rank 0 runs rounds, detects failures, remaps data and records the run."""

    comm_period: int = _f(10, _int(1))
    delta_switch: float = _f(0.0, _num(0))  # 0 = off
    send_gradients: bool = _f(False, _bool)
    aggregate: str = _f("uniform", _choice("uniform", "samples", "loss"))
    quantize: int = _f(0, _int(0, 8))  # bits, 0 = off
    stochastic_rounding: bool = _f(False, _bool)
    timeout: float = _f(10.0, _num(0, lo_open=True))  # join handshake and each round's replies
    startup_timeout: float = _f(120.0, _num(0, lo_open=True))  # a worker's wait while rank 0 loads data
    failure_detector: str = _f("auto", _choice("auto", "ulfm", "timeout"))
    watch_exits: bool = _f(True, _bool)  # the coordinator sees its own host's ranks end at once (a pidfd each)
    remap: str = _f("representative", _choice("representative", "full", "none"))
    checkpoint_every: int = _f(0, _int(0))  # 0 = only at the end
    keep: int = _f(3, _int(1))
    tensorboard: bool = _f(False, _bool)
    shared_folder: str = _f("runs/{name}", _nonempty_str)  # the run dir; {name} = Config.name
    eval_every: int = _f(1, _int(1))
    # time to target quality: stop once an evaluated test accuracy (every eval_every rounds) reaches it; the
    # row is evaluated while the next round trains, so the run ends after that next round. null = off
    target_accuracy: float | None = _f(None, _target)
    score_every: int = _f(5, _int(1))  # rounds over which a worker re-scores its whole shard
    scenario: str = _f("", _str)  # a free label for result tables
    progress: bool = _f(True, _bool)
    deputy: bool = _f(True, _bool)  # a worker holds a replica of rank 0's state and takes over if it is lost
    standby_coordinator: bool = _f(False, _bool)  # rank 1 trains nothing: it is the deputy (needs 3+ ranks)
    # a training deputy that takes over goes on training its own rows in the coordinator's process: the run keeps
    # every worker and the takeover changes nothing (exact); false: its rows are handed over as a lost worker's
    deputy_keeps_rows: bool = _f(True, _bool)
    # hot spares: the highest `spares` ranks train nothing and wait (blocked, a few wake-ups a second) until a
    # worker is lost; one then takes that worker's whole shard (ftmpi/core/cluster.py). `ftmpi launch -n W`
    # starts 1 + W + spares ranks
    spares: int = _f(0, _int(0))
    spare_memory_mb: int = _f(1024, _int(0))  # a waiting spare copies ahead the shards that hold their rows
    # (not shards by reference: those it holds over the mapped training rows, no copy) when they fit in this
    # ULFM: rebuild the survivors' communicator (Ack_failed, Shrink, Agree) at each epoch change, in a helper
    # thread. Off by default: the star traffic never needs it, and Open MPI 5.0.11 can segfault in its failure
    # handler while a rebuild runs beside the main thread's probes (docs/NOTES.md)
    alive_comm: bool = _f(False, _bool)
    # rank 0 screens every update before it is applied (ftmpi/core/screen.py): not finite, or a norm above
    # screen_factor times its reference (the larger of the others' median this round and its own recent
    # median) -> left out of the round's aggregate; reject_limit rejections in a row -> the worker is treated
    # as failed (How.REJECTED). The factor: benchmarks/results/screen.md (no honest update rejected)
    screen: bool = _f(True, _bool)
    screen_factor: float = _f(10.0, _num(1, lo_open=True))
    reject_limit: int = _f(3, _int(1))
    # quorum rounds (ftmpi/core/quorum.py): a round closes once `quorum` of the alive workers replied and
    # `straggler_wait` passed since (seconds, or "Nx": N times the median reply time), or when all replied; 1.0 =
    # wait for every alive worker (as before). A reply after its round closed is folded into a later one, at most
    # `max_staleness` rounds late, weighed by `late_weight`; a worker late in most of the last `straggler_window`
    # rounds is given fewer local iterations in proportion to its measured speed
    quorum: float = _f(1.0, _num(0, 1, lo_open=True))
    straggler_wait: float | str = _f("0.5x", _straggler_wait)
    max_staleness: int = _f(2, _int(0))
    late_weight: str = _f("full", _choice("full", "inverse", "drop"))
    straggler_window: int = _f(5, _int(1))


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, where to find it, and how to split it over the workers."""

    # hdf5 | npz | csv: a file of the user's (data.path; see ftmpi/storage/userdata.py)
    dataset: str = _f("fashion-mnist", _choice("fashion-mnist", "mnist", "occupancy", "synthetic", *USER_FORMATS))
    path: str | None = _f(None, _opt_str)
    x: str = _f("X", _nonempty_str)  # hdf5/npz: the features' array (the test set's: "{x}_test", if present)
    y: str = _f("y", _nonempty_str)  # hdf5/npz: the labels' array (the test set's: "{y}_test")
    label: str | None = _f(None, _opt_str)  # csv: the label column's header name (null: the last column)
    partition: str = _f("iid", _choice("iid", "label-skew", "unbalanced", "contiguous"))
    alpha: float = _f(0.3, _num(0, lo_open=True))  # Dirichlet concentration for label-skew
    classes_per_worker: int = _f(0, _int(0))  # 0 = use alpha
    power: float = _f(1.5, _num(0, lo_open=True))  # power-law exponent for unbalanced
    n_samples: int = _f(4000, _int(10))  # synthetic only
    n_features: int = _f(20, _int(1))
    n_classes: int = _f(4, _int(2))
    # synthetic, and a user file without a test set of its own
    test_fraction: float = _f(0.2, _num(0, 1, lo_open=True, hi_open=True))
    # shards of uint8 rows that rank 0 writes (workers that cannot read the prepared copy): deflate level 1
    compress_shards: bool = _f(True, _bool)


_FAULT_RE = re.compile(r"^(kill|exit|raise|hang|pause|slow|slowdown|nan|corrupt|flip|scale)"
                       r":(\d+)@(\d+|start|deal|finish)(?::([^:]+))?$")

#: The named points a fault can also fire at (``KIND:R@start``), as the negative ``FaultSpec.round`` that stands
#: for each: ``start`` before the rank's hello (a worker) or before the join (rank 0), after MPI_Init; ``deal``
#: when the shard arrives (a worker) or before the rows are dealt (rank 0); ``finish`` when told to stop (a
#: worker) or before the final checkpoint and the stop (rank 0).
FAULT_POINTS = {"start": -1, "deal": -2, "finish": -3}


_TIMED = ("pause", "slow")
_TAMPER = ("nan", "corrupt", "flip", "scale")  # a worker's reply's update is tampered with (ftmpi.faults.tamper)


@dataclass(frozen=True)
class FaultSpec:
    """One injected fault: ``kind`` (kill/exit/raise/hang/pause/slow/slowdown/nan/corrupt) hits world ``rank`` at
    ``round`` (``slowdown``: from that round on, ``seconds`` holding its factor F).

    Rank 0 may be hit too (coordinator loss), except by ``nan`` and ``corrupt`` (a worker's update);
    ``pause`` and ``slow`` take seconds ``S``, ``corrupt`` an optional scale ``S`` (in ``seconds``: 0 = a
    high exponent bit flipped instead)."""

    kind: str
    rank: int
    round: int
    seconds: float = 0.0

    def __str__(self) -> str:
        at = next((name for name, v in FAULT_POINTS.items() if v == self.round), str(self.round))
        base = f"{self.kind}:{self.rank}@{at}"
        return f"{base}:{self.seconds:g}" if self.kind in _TIMED or self.seconds else base


def _fault(spec: Any) -> FaultSpec:
    if not isinstance(spec, str):
        raise _Bad("a fault string such as 'kill:1@3' or 'slow:2@0:0.5'")
    m = _FAULT_RE.match(spec.strip())
    if m is None:
        raise _Bad("kill:R@N, exit:R@N, raise:R@N, hang:R@N, pause:R@N:S, slow:R@N:S, slowdown:R@N:F, nan:R@N, "
                   "corrupt:R@N[:S], flip:R@N or scale:R@N:F (R world rank, N a round >= 0 or one of start, deal, "
                   "finish)")
    kind, rank, secs = m.group(1), int(m.group(2)), m.group(4)
    if kind == "flip":  # corrupt:R@N by its plain name: one high exponent bit flipped
        if secs is not None:
            raise _Bad("flip:R@N without a number (scale:R@N:F scales the update by F)")
        kind = "corrupt"
    elif kind == "scale":  # corrupt:R@N:F by its plain name
        if secs is None:
            raise _Bad("scale:R@N:F with F the factor the update is scaled by")
        kind = "corrupt"
    rnd = FAULT_POINTS[m.group(3)] if m.group(3) in FAULT_POINTS else int(m.group(3))
    if kind in _TAMPER and (rank < 1 or rnd < 0):
        raise _Bad(f"{kind}:R@N with R a worker (>= 1) and N a round number: it tampers with a worker's update")
    if kind == "corrupt" and secs is not None:
        try:
            scale = float(secs)
        except ValueError:
            scale = math.nan
        if not (math.isfinite(scale) and scale != 0 and scale != 1):
            raise _Bad("corrupt:R@N:S with S the factor the update is scaled by (a finite number other than 0 "
                       "and 1), or corrupt:R@N (a high exponent bit flipped)")
        return FaultSpec(kind, rank, rnd, scale)
    if kind == "slowdown":  # slowdown:R@N:F, rank R F times slower from round N on (ftmpi.faults.slowdown)
        try:
            factor = float(secs) if secs is not None else math.nan
        except ValueError:
            factor = math.nan
        if not (math.isfinite(factor) and factor >= 1) or rnd < 0:
            raise _Bad("slowdown:R@N:F with N a round number and F >= 1 the factor by which rank R is slower from "
                       "round N on")
        return FaultSpec(kind, rank, rnd, factor)
    if kind not in _TIMED:
        if secs is not None:
            raise _Bad(f"{kind}:R@N without seconds (only pause and slow take :S, corrupt a scale, slowdown a "
                       "factor)")
        return FaultSpec(kind, rank, rnd)
    try:
        seconds = float(secs) if secs is not None else math.nan
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise _Bad(f"{kind}:R@N:S with S a number of seconds > 0")
    return FaultSpec(kind, rank, rnd, seconds)


def parse_fault(spec: str) -> FaultSpec:
    """Parse one fault string: ``kill:R@N``, ``exit:R@N``, ``hang:R@N`` or ``slow:R@N:S``.

    Args:
        spec: The fault; R is the world rank (>= 1), N the round (>= 0), S seconds (> 0).

    Returns:
        The parsed :class:`FaultSpec`.

    Raises:
        ConfigError: If the string is malformed.
    """
    try:
        return _fault(spec)
    except _Bad as exc:
        raise ConfigError(f"fault {_show(spec)}: expected {exc}") from None


@dataclass(frozen=True)
class Config:
    """A whole, validated run configuration. ``source`` is the YAML file it came from, if any."""

    name: str = "default"
    model: ModelConfig = field(default_factory=ModelConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    data: DataConfig = field(default_factory=DataConfig)
    faults: tuple[FaultSpec, ...] = ()
    source: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def run_dir(self) -> Path:
        """The run directory: ``executor.shared_folder`` with ``{name}`` replaced by :attr:`name`."""
        return Path(self.executor.shared_folder.replace("{name}", self.name))


_SECTIONS: dict[str, type] = {
    "model": ModelConfig, "optimizer": OptimizerConfig, "executor": ExecutorConfig, "data": DataConfig,
}
_TOP = ("name", "faults")
_KEYS = [f"{s}.{f.name}" for s, cls in _SECTIONS.items() for f in fields(cls)]
_LEGACY = ("executor.strategy", "executor.aggregate_mode")
_AGGREGATE_MODES = {0: "uniform", 1: "samples", 2: "loss"}
_REMAP_CODES = {0: "representative", 1: "full"}
_ALIASES = {"lr": "learning_rate", "bits": "quantize", "epochs": "n_iterations"}  # common misnomers

_Sourced = dict[str, tuple[Any, str]]  # key path -> (raw value, where it came from)


def _show(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _suggest(path: str) -> str:
    """Return " (did you mean 'x.y'?)" for the valid key closest to ``path``, or ""."""
    section, _, key = path.rpartition(".")
    key = _ALIASES.get(key, key)
    leaves = {k: k.rpartition(".")[2] for k in _KEYS}
    same = {leaf: k for k, leaf in leaves.items() if k.startswith(section + ".")}
    hits = [same[m] for m in _close(key, same, 1, 0.6)]
    hits = hits or [k for k, leaf in leaves.items() if leaf == key]
    if not hits:
        every = {leaf: k for k, leaf in leaves.items()}
        hits = [every[m] for m in _close(key, every, 1, 0.75)]
    return f" (did you mean '{hits[0]}'?)" if hits else ""


@functools.cache
def _loader() -> Any:
    """A SafeLoader that reads ``1e-8`` as a float and refuses duplicate keys (yaml is imported here, when a
    config is read from YAML: a rank given the launcher's config never imports it)."""
    import yaml

    class _Loader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key if isinstance(key, (str, int, float, bool)) else id(key_node))
            return super().construct_mapping(node, deep)

    _Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return _Loader


def _yaml_value(text: str, where: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or str(exc)
        problem = " ".join(problem.split())
        raise ConfigError(f"{where}: not a valid YAML value {_show(text)}: {problem}") from None


def _read_yaml(path: str) -> dict[Any, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    import yaml

    try:
        tree = yaml.load(text, Loader=_loader())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: YAML syntax error: {' '.join(problem.split())}") from None
    if tree is None:  # nothing but whitespace or comments: surely not what the user meant to run
        raise ConfigError(f"{path}: the config file is empty (expected sections such as 'model:' or 'executor:'; "
                          "run without a file to use the defaults)")
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {_show(tree)}")
    return tree


def _flatten(tree: Mapping[Any, Any], where: str) -> _Sourced:
    """Turn ``{section: {key: value}}`` into ``{"section.key": (value, where)}``, refusing unknown keys."""
    flat: _Sourced = {}
    for section, body in tree.items():
        section = str(section)
        if section in _TOP:
            flat[section] = (body, where)
            continue
        if section not in _SECTIONS:
            hits = _close(section, [*_SECTIONS, *_TOP], 1, 0.6)
            hint = f" (did you mean '{hits[0]}'?)" if hits else ""
            raise ConfigError(f"{where}: {section}: unknown section{hint}")
        if body is None:  # "model:" with nothing under it
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{where}: {section}: expected a mapping of keys, got {_show(body)}")
        for key, value in body.items():
            path = f"{section}.{key}"
            if path not in _KEYS and path not in _LEGACY:
                raise ConfigError(f"{where}: {path}: unknown key{_suggest(path)}")
            flat[path] = (value, where)
    return flat


def _from_overrides(overrides: Sequence[str]) -> _Sourced:
    flat: _Sourced = {}
    for item in overrides:
        path, eq, text = item.partition("=")
        path = path.strip()
        if not eq or not path:
            raise ConfigError(f"--set {_show(item)}: expected section.key=value")
        value = _yaml_value(text, f"--set {path}")
        section, dot, key = path.partition(".")
        flat.update(_flatten({section: {key: value}} if dot else {path: value}, "--set"))
    return flat


def _from_env(env: Mapping[str, str]) -> _Sourced:
    flat: _Sourced = {}
    for path in (*_TOP, *_KEYS):
        var = "FTMPI_" + path.replace(".", "_").upper()
        if var in env:
            flat[path] = (_yaml_value(env[var], var), var)
    return flat


def _apply_legacy(flat: _Sourced, warnings: list[str]) -> None:
    """Map the original system's spellings in one source onto the current keys (in place)."""
    if "executor.strategy" in flat:
        value, where = flat.pop("executor.strategy")
        if value != "mw":
            raise ConfigError(f"{where}: executor.strategy: expected 'mw' (master-worker, the only "
                              f"strategy), got {_show(value)}")
        warnings.append(f"{where}: executor.strategy: deprecated and ignored (mw is the only strategy)")
    if "executor.aggregate_mode" in flat:
        value, where = flat.pop("executor.aggregate_mode")
        if not _is_int(value) or value not in _AGGREGATE_MODES:
            raise ConfigError(f"{where}: executor.aggregate_mode: expected 0, 1 or 2, got {_show(value)}")
        new = _AGGREGATE_MODES[value]
        if "executor.aggregate" in flat and flat["executor.aggregate"][0] != new:
            raise ConfigError(f"{where}: executor.aggregate_mode: {value} means aggregate '{new}', but "
                              f"executor.aggregate is {_show(flat['executor.aggregate'][0])}; keep one")
        flat["executor.aggregate"] = (new, where)
        warnings.append(f"{where}: executor.aggregate_mode: deprecated; use executor.aggregate: {new}")
    if "executor.remap" in flat and _is_int(flat["executor.remap"][0]):
        value, where = flat["executor.remap"]
        if value not in _REMAP_CODES:
            raise ConfigError(f"{where}: executor.remap: expected one of representative, full, none "
                              f"(or legacy 0, 1), got {_show(value)}")
        flat["executor.remap"] = (_REMAP_CODES[value], where)
        warnings.append(f"{where}: executor.remap: numeric value {value} is deprecated; use "
                        f"executor.remap: {_REMAP_CODES[value]}")
    if "executor.scenario" in flat and _is_int(flat["executor.scenario"][0]):
        value, where = flat["executor.scenario"]
        flat["executor.scenario"] = (str(value), where)
        warnings.append(f"{where}: executor.scenario: numeric value {value} is now only a label; "
                        "executor.quantize and executor.remap choose the behaviour")


def _checked(path: str, check: Callable[[Any], Any], value: Any, where: str) -> Any:
    try:
        return check(value)
    except _Bad as exc:
        raise ConfigError(f"{where}: {path}: expected {exc}, got {_show(value)}") from None


def _faults(value: Any, where: str) -> tuple[FaultSpec, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # "kill:1@3, hang:2@5" (handy in FTMPI_FAULTS)
        value = [part for part in re.split(r"[,\s]+", value) if part]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: faults: expected a list of fault strings, got {_show(value)}")
    return tuple(_checked(f"faults[{i}]", _fault, spec, where) for i, spec in enumerate(value))


PASSED = "FTMPI_RESOLVED_CONFIG"  # the launcher's validated config, for the ranks (see pass_on)


def _identity(source: str | None, overrides: Sequence[str], env: Mapping[str, str]) -> list[Any] | None:
    """What a config is loaded from, as plain JSON data: the file (absolute path, size, modification time), the
    overrides and the ``FTMPI_*`` variables that set keys; None when the file cannot be looked at (nothing
    passed on can match it: load_config then reads it and says what is wrong)."""
    try:
        st = os.stat(source) if source is not None else None
    except OSError:
        return None
    names = {"FTMPI_" + p.replace(".", "_").upper() for p in (*_TOP, *_KEYS)}
    return [None if source is None else os.path.abspath(source), st and st.st_size, st and st.st_mtime_ns,
            [str(o) for o in overrides], [[k, v] for k, v in sorted(env.items()) if k in names]]


def pass_on(cfg: Config, path: str | os.PathLike[str] | None, overrides: Sequence[str] = (),
            env: Mapping[str, str] | None = None) -> str:
    """``cfg`` (what :func:`load_config` returned for these arguments) as the value of :data:`PASSED`, which the
    launcher exports to the ranks: a rank whose own arguments, file and ``FTMPI_*`` keys are the same takes it
    instead of reading the YAML again, so that it neither imports yaml nor parses the file (CPU that every
    rank would spend while the ranks of the job start on shared cores), and every rank runs the config the
    launcher checked. Anything else (another file, a file changed since, other overrides) is read as usual.

    The value is JSON (never unpickled): ``{"identity": ..., "config": ...}``, the config as plain data with
    every fault as its string; a rank builds the config from it only when the identity is its own, and checks
    every value as it would a YAML file's."""
    import json

    env = os.environ if env is None else env
    source = None if path is None else os.fspath(path)
    plain = dataclasses.asdict(cfg)
    plain["faults"] = [str(f) if not f.seconds else f"{str(f).rsplit(':', 1)[0]}:{f.seconds!r}"
                       for f in cfg.faults]
    return json.dumps({"identity": _identity(source, list(overrides), env), "config": plain},
                      separators=(",", ":"))


def _passed(value: str, identity: list[Any] | None) -> Config | None:
    """The config in a :func:`pass_on` value if it was made for ``identity`` (compared before any of the config
    in it is used); None otherwise, or if the value is not one of ours or holds a value that does not pass
    its check."""
    import json

    try:
        passed = json.loads(value)
        if identity is None or not isinstance(passed, dict) or passed.get("identity") != identity:
            return None
        return _from_plain(passed["config"])
    except (ValueError, TypeError, KeyError, AttributeError, ConfigError):
        return None


def _from_plain(plain: dict[str, Any]) -> Config:
    """A :class:`Config` from :func:`pass_on`'s plain data, every value checked as load_config checks it.

    Raises:
        KeyError, TypeError: data that is not exactly a config of this version's fields.
        ConfigError: a value that fails its check.
    """
    if set(plain) != {"name", "faults", "source", "warnings", *_SECTIONS}:
        raise KeyError("not a config of this version")
    where = PASSED
    sections = {}
    for section, cls in _SECTIONS.items():
        body = plain[section]
        if set(body) != {f.name for f in fields(cls)}:
            raise KeyError(f"{section}: not the fields of this version")
        sections[section] = cls(**{f.name: _checked(f"{section}.{f.name}", f.metadata["check"], body[f.name], where)
                                   for f in fields(cls)})
    model, opt = sections["model"], sections["optimizer"]
    if (model.type == "mlp" and not model.hidden) or \
            (opt.rep_weight == "shard-legacy" and opt.rep_selection != "random"):
        raise ConfigError(f"{where}: keys that load_config refuses together")
    source, warnings = plain["source"], plain["warnings"]
    if not (source is None or isinstance(source, str)) or not all(isinstance(w, str) for w in warnings):
        raise TypeError("source and warnings are strings")
    return Config(name=_checked("name", _run_name, plain["name"], where), faults=_faults(plain["faults"], where),
                  source=source, warnings=tuple(warnings), **sections)


def load_config(path: str | os.PathLike[str] | None, overrides: Sequence[str] = (),
                env: Mapping[str, str] | None = None) -> Config:
    """Load, merge and validate a configuration.

    Args:
        path: The YAML file, or None for the defaults alone.
        overrides: ``section.key=value`` strings (the CLI's ``--set``); the value is read as YAML.
        env: The environment to read ``FTMPI_*`` variables from; ``os.environ`` when None.

    Returns:
        The validated, frozen :class:`Config`.

    Raises:
        ConfigError: One line naming the file/override/variable, the key and what was expected.
    """
    if isinstance(overrides, str):
        overrides = [overrides]
    env = os.environ if env is None else env
    source = None if path is None else os.fspath(path)
    if env.get(PASSED):  # the launcher's own result for these same arguments (see pass_on)
        passed = _passed(env[PASSED], _identity(source, overrides, env))
        if passed is not None:
            return passed
    warnings: list[str] = []
    sources = [_from_env(env)]
    if source is not None:
        sources.append(_flatten(_read_yaml(source), source))
    sources.append(_from_overrides(overrides))
    merged: _Sourced = {}
    for flat in sources:  # lowest precedence first
        _apply_legacy(flat, warnings)
        merged.update(flat)

    sections = {}
    for section, cls in _SECTIONS.items():
        kwargs = {}
        for f in fields(cls):
            key = f"{section}.{f.name}"
            if key in merged:
                kwargs[f.name] = _checked(key, f.metadata["check"], *merged[key])
        sections[section] = cls(**kwargs)
    name, where = (Path(source).stem, f"{source} (its file name)") if source is not None else ("default", "defaults")
    if "name" in merged:
        name, where = merged["name"]
    name = _checked("name", _run_name, name, where)
    faults = _faults(*merged["faults"]) if "faults" in merged else ()

    model = sections["model"]
    if model.type == "mlp" and not model.hidden:
        where = merged.get("model.hidden", merged.get("model.type", (None, "defaults")))[1]
        raise ConfigError(f"{where}: model.hidden: expected at least one hidden layer for type mlp, got []")
    if model.options and ":" not in model.type:
        raise ConfigError(f"{merged['model.options'][1]}: model.options: only a plug-in model takes options "
                          f"(model.type path/to/file.py:ClassName or package.module:ClassName), got type {model.type}")
    if ":" in model.type:
        sections["model"] = dataclasses.replace(model, type=_plugin_path(model.type, merged["model.type"][1], source))
    data = sections["data"]
    if data.dataset in USER_FORMATS and not (data.path or "").strip():
        where = merged.get("data.dataset", (None, "defaults"))[1]
        raise ConfigError(f"{where}: data.path: expected the {data.dataset} file to train on "
                          f"(data.dataset: {data.dataset}), got {_show(data.path)}")
    opt = sections["optimizer"]
    if opt.rep_weight == "shard-legacy" and opt.rep_selection != "random":
        where = merged.get("optimizer.rep_weight", (None, "defaults"))[1]
        raise ConfigError(f"{where}: optimizer.rep_weight: 'shard-legacy' (the rule before issue 15's fix, kept for "
                          f"the handoff study) needs optimizer.rep_selection: random, got {opt.rep_selection!r}")
    return Config(name=name, faults=faults, source=source, warnings=tuple(dict.fromkeys(warnings)),
                  **sections)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """Plain-data form of ``cfg`` (lists, faults as strings) that :func:`load_config` reads back."""
    out: dict[str, Any] = {"name": cfg.name}
    for section in _SECTIONS:
        values = dataclasses.asdict(getattr(cfg, section))
        out[section] = {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}
    out["faults"] = [str(f) for f in cfg.faults]
    return out


def dump_config(cfg: Config, path: str | os.PathLike[str]) -> Path:
    """Write the resolved configuration as YAML, atomically (temp file, then ``os.replace``).

    Args:
        cfg: The configuration to write.
        path: Destination file; missing parent directories are created.

    Returns:
        The path written.
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    header = f"# resolved ftmpi configuration (from {cfg.source or 'defaults'})\n"
    import yaml

    text = header + yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
    return replace_atomic(dest, lambda fh: fh.write(text))  # mode from the umask, like the other outputs
