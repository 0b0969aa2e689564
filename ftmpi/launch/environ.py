"""The ``FTMPI_*`` environment variables that steer a launch and its ranks, checked before anything starts.
No MPI.

A value a variable does not take is one :class:`~ftmpi.errors.ConfigError` line naming the variable, its
value and what it takes (exit code 2), instead of a traceback later or a silent default. The config's own
variables (``FTMPI_<SECTION>_<KEY>``) are checked with the config (:mod:`ftmpi.config`); paths
(``FTMPI_DATA``, ``FTMPI_PREPARED``, ``FTMPI_TIMELINE``) by the code that opens them; ``FTMPI_MPIRUN`` (or
``MPIRUN``) when the launcher starts it.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from ftmpi.errors import ConfigError

#: the stop signals the launcher handles, and so the names FTMPI_REQUEUE_SIGNALS may hold
STOP_SIGNALS = ("SIGTERM", "SIGUSR1", "SIGINT")

_FLAGS = {"FTMPI_NO_ULFM": ("0", "1"), "FTMPI_DRY_RUN": ("0", "1"), "FTMPI_MPI_TRANSPORT": ("ob1", "default")}
_RANK_FLAGS = {"FTMPI_SHARED_DATA": ("0", "1", "auto")}


def _bad(name: str, value: str, what: str) -> ConfigError:
    return ConfigError(f"environment variable {name}={value!r}: expected {what}")


def seconds(env: Mapping[str, str], name: str, default: float) -> float:
    """``env[name]`` as a number of seconds > 0; ``default`` when unset or empty.

    Raises:
        ConfigError: anything else (names the variable).
    """
    text = env.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise _bad(name, env[name], "a number of seconds > 0")
    return value


def check_rank_env(env: Mapping[str, str]) -> None:
    """The variables every rank reads (``FTMPI_SHARED_DATA``, the tests' ``FTMPI_TEST_SLOW``).

    Raises:
        ConfigError: the first variable with a value it does not take.
    """
    _check_flags(env, _RANK_FLAGS, strip=True)  # read stripped
    slow = env.get("FTMPI_TEST_SLOW", "").strip()
    for item in filter(None, (s.strip() for s in slow.split(","))):
        kind, _, secs = item.partition(":")
        try:
            ok = bool(kind) and math.isfinite(float(secs)) and float(secs) >= 0
        except ValueError:
            ok = False
        if not ok:
            raise _bad("FTMPI_TEST_SLOW", slow, "KIND:SECONDS[,KIND:SECONDS...], e.g. checkpoint:2")


def check_launch_env(env: Mapping[str, str]) -> None:
    """The variables the launcher reads, and those its ranks will read (they get the launcher's environment).

    Raises:
        ConfigError: the first variable with a value it does not take.
    """
    seconds(env, "FTMPI_JOB_TIMEOUT", 3600.0)
    seconds(env, "FTMPI_START_TIMEOUT", 120.0)
    seconds(env, "FTMPI_FINISH_GRACE", 30.0)
    _check_flags(env, _FLAGS)
    text = env.get("FTMPI_REQUEUE_SIGNALS")
    if text is not None and not all(s.strip() in STOP_SIGNALS for s in text.split(",") if s.strip()):
        raise _bad("FTMPI_REQUEUE_SIGNALS", text, "a comma-separated list of " + ", ".join(STOP_SIGNALS))
    check_rank_env(env)


def _check_flags(env: Mapping[str, str], flags: Mapping[str, tuple[str, ...]], strip: bool = False) -> None:
    for name, allowed in flags.items():
        value = env.get(name)
        if value is not None and (value.strip() if strip else value) not in ("", *allowed):
            raise _bad(name, value, " or ".join(allowed) + " (or unset)")
