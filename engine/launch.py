"""How a run is launched: which devices it takes and the `accelerate launch` command line.

The worker asks `gpus_needed` how many of its free GPUs a run takes (0: it trains on the CPU),
then starts `launch_command`. The launch matrix, as accelerate 1.x behaves:

| trains on | processes (all machines) | flags                                            |
|-----------|--------------------------|--------------------------------------------------|
| CPU       | 1                        | --cpu                                            |
| CPU       | 2+                       | --multi_gpu (N DDP processes on gloo), and       |
|           |                          | ACCELERATE_USE_CPU=true so each is a CPU process |
| GPU       | 1                        | --gpu_ids G                                      |
| GPU       | 2+                       | --multi_gpu --gpu_ids G,H                        |

(`--cpu --num_processes 2` silently starts one process; `--multi_gpu` without a GPU and without
ACCELERATE_USE_CPU starts N independent single-process trainings.) Every launch passes
`--config_file`: the run's own accelerate config file, or a neutral one, so that a user's default
accelerate config (~/.cache/huggingface/accelerate/default_config.yaml, read whenever neither
`--config_file` nor `--cpu` is given) never half-applies to a run.

A run of one process on one machine without a config file of its own (the first and third rows)
starts `python -m engine.train` directly, with the environment accelerate's simple launcher
would give it (`simple_launcher_env`; tests/test_launch.py compares the two): that launcher is
a second interpreter that imports torch and tears it down around the trainer, some 2 s a run.

A run across machines: the worker on one host launches machine_rank (usually 0); every other
host joins with `python -m engine.launch --run-id N --machine-rank R` (see README, "Several
machines"), which builds the same command for its rank. This module imports nothing heavy: the
dashboard lists accelerate config files through it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from engine import choices
from engine.timings import LAUNCHED_AT_ENV

# Flags only: distributed_type NO and accelerate's defaults for everything else.
NEUTRAL_CONFIG = Path(__file__).resolve().parent / "accelerate_neutral.yaml"
CONFIGS_ENV = "VISIONBOARD_ACCELERATE_CONFIGS"
CONFIGS_DIR = "accelerate"  # under the data directory, unless $VISIONBOARD_ACCELERATE_CONFIGS
CONFIG_SUFFIXES = (".yaml", ".yml")
MULTI_NODE_PORT = 29500  # every machine must know the port: a fixed one when none is set
LAUNCHED_ENV = "VISIONBOARD_LAUNCHED"  # how launch_command started the trainer:
VIA_ACCELERATE = "1"  # under `accelerate launch` (its launcher, or torchrun, is the parent)
DIRECT = "direct"  # `python -m engine.train` itself, the worker its parent
# Whole numbers in an accelerate config file, checked when it is read.
CONFIG_INTEGERS = ("num_processes", "num_machines", "machine_rank", "main_process_port")


class LaunchError(ValueError):
    """A run that cannot be launched on this machine: the config key at fault and why."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(message)


# -- devices ----------------------------------------------------------------------------------


# Any of these exists where a CUDA (or ROCm) driver is installed on Linux.
GPU_DRIVER_FILES = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia", "/dev/kfd", "/dev/dxg")


def gpu_count() -> int:
    """GPUs this process sees (0 when CUDA_VISIBLE_DEVICES is empty or torch has no CUDA).
    A Linux machine without a GPU driver answers without importing torch (seconds that
    `visionboard train` and its worker would spend before every launch)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) == "":
        return 0
    if sys.platform.startswith("linux") and not any(map(os.path.exists, GPU_DRIVER_FILES)):
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def trains_on_cpu(device: str, gpus_here: int) -> bool:
    """`auto` is the CPU on a machine without GPU; `cuda` never is."""
    return device == "cpu" or (device == "auto" and gpus_here == 0)


def precision_problem(mixed_precision: str, device: str, on_cpu: bool) -> str | None:
    """Why `mixed_precision` cannot train on that device, or None. accelerate trains fp16 on
    the CPU silently in fp32; bf16 it autocasts on the CPU for real."""
    precision = choices.MIXED_PRECISIONS.get(mixed_precision)
    if not on_cpu or precision is None or precision.on_cpu:
        return None
    fits = " or ".join(p.name for p in choices.MIXED_PRECISIONS.values() if p.on_cpu)
    why = " (device=auto and this machine has no GPU)" if device == "auto" else ""
    return (
        f"mixed_precision={mixed_precision} needs a GPU and this run trains on the CPU{why}; "
        f"use {fits}, or train on a GPU"
    )


def processes_per_machine(cfg: dict[str, Any]) -> int:
    """Processes this machine starts for the run: `num_processes`, or what its accelerate
    config file says (its num_processes counts every machine)."""
    if cfg.get("accelerate_config"):
        file = read_accelerate_config(cfg["accelerate_config"])
        total = int(file.get("num_processes") or 1)
        return max(1, total // max(1, int(file.get("num_machines") or 1)))
    return int(cfg.get("num_processes", 1))


def machines_of(cfg: dict[str, Any]) -> int:
    if cfg.get("accelerate_config"):
        return int(read_accelerate_config(cfg["accelerate_config"]).get("num_machines") or 1)
    return int(cfg.get("num_machines", 1))


def worker_rank_of(cfg: dict[str, Any]) -> int:
    """The machine rank the worker that claims the run launches."""
    if cfg.get("accelerate_config"):
        return int(read_accelerate_config(cfg["accelerate_config"]).get("machine_rank") or 0)
    return int(cfg.get("machine_rank", 0))


def gpus_needed(cfg: dict[str, Any], gpus_here: int) -> int:
    """How many GPUs the run takes on a machine with `gpus_here` (0: it trains on the CPU);
    LaunchError when it cannot train here at all."""
    device = cfg.get("device", "auto")
    procs = processes_per_machine(cfg)
    if device == "cuda" and gpus_here == 0:
        raise LaunchError("device", "device=cuda but the worker sees no GPU")
    if trains_on_cpu(device, gpus_here) or file_uses_cpu(cfg):
        problem = precision_problem(cfg.get("mixed_precision", "no"), device, on_cpu=True)
        if problem:
            raise LaunchError("mixed_precision", problem)
        return 0
    if procs > gpus_here:
        raise LaunchError(
            "num_processes",
            f"num_processes={procs} needs {procs} GPUs; this machine has {gpus_here}",
        )
    return procs


def physical_gpu_ids(gpus: list[int], environ: dict[str, str] | None = None) -> list[str]:
    """The worker counts GPUs as it sees them; a child's CUDA_VISIBLE_DEVICES (and accelerate's
    --gpu_ids, which it copies there) needs the ids the worker's own CUDA_VISIBLE_DEVICES maps
    them to."""
    visible = (environ if environ is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if not visible:
        return [str(g) for g in gpus]
    names = [v.strip() for v in visible.split(",")]
    return [names[g] for g in gpus]


# -- accelerate config files ------------------------------------------------------------------


def configs_dir(home: str | Path) -> Path:
    """The folder whose config files the New run form offers."""
    configured = os.environ.get(CONFIGS_ENV)
    return Path(configured).expanduser() if configured else Path(home) / CONFIGS_DIR


def list_accelerate_configs(home: str | Path) -> list[Path]:
    folder = configs_dir(home)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())


def resolve_accelerate_config(value: str, home: str | Path) -> str:
    """An absolute path for `accelerate_config`: a bare file name is one in configs_dir(home),
    anything else a path from this process's directory (the trainer runs elsewhere)."""
    if not value:
        return ""
    path = Path(value).expanduser()
    if not path.is_absolute() and len(path.parts) == 1 and (configs_dir(home) / path).exists():
        path = configs_dir(home) / path
    return os.path.abspath(path)


def read_accelerate_config(path: str | Path) -> dict[str, Any]:
    """The file as a dict; LaunchError naming the key when it is missing or not a config."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except OSError as exc:
        raise LaunchError(
            "accelerate_config",
            f"cannot read {path} ({exc.strerror}); expected a file made by `accelerate config`",
        ) from None
    except yaml.YAMLError as exc:
        raise LaunchError("accelerate_config", f"{path} is not valid YAML ({exc})") from None
    if not isinstance(data, dict) or "distributed_type" not in data:
        raise LaunchError(
            "accelerate_config",
            f"{path} has no distributed_type; expected a file made by `accelerate config`",
        )
    for key in CONFIG_INTEGERS:
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            if not (isinstance(value, str) and value.strip().isdigit()):
                raise LaunchError(
                    "accelerate_config",
                    f"{path}: {key}={value!r} is not a whole number; expected e.g. {key}: 1",
                )
    return data


def file_uses_cpu(cfg: dict[str, Any]) -> bool:
    if not cfg.get("accelerate_config"):
        return False
    file = read_accelerate_config(cfg["accelerate_config"])
    return bool(file.get("use_cpu")) or file.get("distributed_type") == "MULTI_CPU"


def check_launch(cfg: dict[str, Any], gpus_here: int, home: str | Path) -> LaunchError | None:
    """What the pre-queue check can tell on this machine: the accelerate config file exists
    and reads, and the mixed precision fits the device. (GPU counts are the worker's to judge:
    with a shared database it may run on another host.)"""
    path = cfg.get("accelerate_config")
    if path and not Path(path).is_file():
        offered = ", ".join(p.name for p in list_accelerate_configs(home)) or "none there"
        return LaunchError(
            "accelerate_config",
            f"{path} does not exist; expected an accelerate config file, e.g. one of "
            f"{configs_dir(home)} ({offered})",
        )
    device = cfg.get("device", "auto")
    try:
        on_cpu = file_uses_cpu(cfg) or trains_on_cpu(device, gpus_here)  # reads the file first
    except LaunchError as exc:
        return exc
    problem = precision_problem(cfg.get("mixed_precision", "no"), device, on_cpu)
    return LaunchError("mixed_precision", problem) if problem else None


# -- the command line -------------------------------------------------------------------------


def launch_command(
    run: dict,
    home: Path,
    gpus: list[int],
    port: int,
    machine_rank: int | None = None,
    direct: bool = True,
) -> tuple[list[str], dict]:
    """The command line and environment for a run on this machine, given the GPUs it was
    handed (empty: the CPU) and a free port (used on one machine when the run names none):
    `accelerate launch`, or the trainer itself for a run that starts directly (unless `direct`
    is False). `machine_rank` overrides the run's for a machine that joins it."""
    cfg = run["config"]
    env = dict(os.environ, PYTHONUNBUFFERED="1", VISIONBOARD_HOME=str(home))
    env[LAUNCHED_ENV] = VIA_ACCELERATE
    env[LAUNCHED_AT_ENV] = f"{time.time():.3f}"  # the trainer's timings count from here
    env.pop("ACCELERATE_USE_CPU", None)  # ours to set, never inherited
    trainer = ["-m", "engine.train", "--run-id", str(run["id"]), "--home", str(home)]
    if run.get("resume_requested"):
        trainer.append("--resume")
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    rank = cfg.get("machine_rank", 0) if machine_rank is None else machine_rank
    if gpus:
        ids = ",".join(physical_gpu_ids(gpus))
        env["CUDA_VISIBLE_DEVICES"] = ids
        device_flags = ["--gpu_ids", ids]
    else:
        # The trainer's Accelerator reads it: with --multi_gpu a device=auto run would otherwise
        # look for CUDA, find none and train alone in each process.
        env["CUDA_VISIBLE_DEVICES"] = ""
        env["ACCELERATE_USE_CPU"] = "true"
        device_flags = []
    if direct and starts_directly(cfg):
        env.update(simple_launcher_env(cfg, bool(gpus), env))
        env[LAUNCHED_ENV] = DIRECT
        return [sys.executable, *trainer], env
    if cfg.get("accelerate_config"):
        # The file decides processes, machines and addresses; the run keeps its precision and
        # the worker its GPUs.
        file = read_accelerate_config(cfg["accelerate_config"])
        cmd += ["--config_file", cfg["accelerate_config"], *device_flags]
        if machine_rank is not None:
            cmd += ["--machine_rank", str(machine_rank)]
        if not file.get("main_process_port") and int(file.get("num_machines") or 1) == 1:
            # Two such runs on one host would both take accelerate's 29500.
            cmd += ["--main_process_port", str(port)]
    else:
        procs = int(cfg.get("num_processes", 1))
        machines = int(cfg.get("num_machines", 1))
        total = procs * machines
        cmd += ["--config_file", str(NEUTRAL_CONFIG)]
        cmd += ["--num_machines", str(machines), "--num_processes", str(total)]
        if machines > 1:
            cmd += ["--machine_rank", str(rank), "--main_process_ip", cfg["main_process_ip"]]
            cmd += ["--main_process_port", str(cfg.get("main_process_port") or MULTI_NODE_PORT)]
        else:
            cmd += ["--main_process_port", str(cfg.get("main_process_port") or port)]
        cmd += ["--dynamo_backend", "no", *device_flags]
        if total > 1:
            cmd.append("--multi_gpu")  # on the CPU too: torchrun starts N processes on gloo
        elif not gpus:
            cmd.append("--cpu")
        if not gpus:
            # accelerate sets OMP_NUM_THREADS=1 unless told; the cores are shared out instead.
            cmd += ["--num_cpu_threads_per_process", str(cpu_threads(procs))]
    cmd += ["--mixed_precision", cfg.get("mixed_precision", "no")]
    return cmd + trainer, env


def starts_directly(cfg: dict[str, Any]) -> bool:
    """One process on one machine, no accelerate config file: nothing for a launcher to do."""
    if cfg.get("accelerate_config"):
        return False
    return int(cfg.get("num_processes", 1)) == 1 and int(cfg.get("num_machines", 1)) == 1


def cpu_threads(processes: int) -> int:
    return max(1, (os.cpu_count() or 1) // processes)


def simple_launcher_env(cfg: dict[str, Any], on_gpu: bool, environ: dict[str, str]) -> dict:
    """The variables `accelerate launch` sets for a one-process run given the flags
    launch_command passes it (accelerate.utils.launch.prepare_simple_launcher_cmd_env after
    its argument checks): the device, precision and compile settings the trainer's Accelerator
    reads, and the CPU threads (on a GPU, accelerate's one thread unless OMP_NUM_THREADS says)."""
    env = {
        "ACCELERATE_USE_CPU": str(not on_gpu),
        "ACCELERATE_MIXED_PRECISION": cfg.get("mixed_precision", "no"),
        "ACCELERATE_DYNAMO_BACKEND": "NO",
        "ACCELERATE_DYNAMO_MODE": "default",
        "ACCELERATE_DYNAMO_USE_FULLGRAPH": "False",
        "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION": "False",
    }
    if on_gpu:
        env["OMP_NUM_THREADS"] = environ.get("OMP_NUM_THREADS") or "1"
    else:
        env |= {"KMP_AFFINITY": "granularity=fine,compact,1,0", "KMP_BLOCKTIME": "1"}
        env["OMP_NUM_THREADS"] = str(cpu_threads(1))
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- joining a run from another machine -------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.launch --run-id N --machine-rank R`: this machine's share of a run
    that spans several machines (the worker on the main host launched its own rank)."""
    parser = argparse.ArgumentParser(prog="engine.launch", description=main.__doc__)
    parser.add_argument("--run-id", type=int, required=True)
    parser.add_argument("--machine-rank", type=int, required=True)
    parser.add_argument("--home", default=None)
    parser.add_argument(
        "--db",
        metavar="URL",
        help="the PostgreSQL database (default: $VISIONBOARD_DB, else the "
        "SQLite file of the data directory)",
    )
    parser.add_argument("--print", action="store_true", help="print the command, do not run it")
    args = parser.parse_args(argv)
    from engine import database, store

    if args.db:
        os.environ[database.ENV] = args.db  # the trainer it starts reads the same database
    home = store.home_dir(args.home)
    try:
        db = store.connect(home)
    except database.DatabaseURLError as exc:
        raise SystemExit(str(exc)) from None
    run = store.get_run(db, args.run_id)
    if run is None:
        where = database.safe_url(db.url) if db.url else home
        raise SystemExit(f"run {args.run_id} not found in {where}")
    try:
        machines = machines_of(run["config"])
        worker_rank = worker_rank_of(run["config"])
        gpus = list(range(gpus_needed(run["config"], gpu_count())))
    except LaunchError as exc:
        raise SystemExit(f"run {args.run_id} cannot train here: {exc}") from None
    if machines == 1:
        raise SystemExit(
            f"run {args.run_id} trains on one machine (num_machines=1): nothing to join"
        )
    if not 0 <= args.machine_rank < machines or args.machine_rank == worker_rank:
        # The worker's host runs its rank; a second launcher of one rank would never meet.
        others = ", ".join(str(r) for r in range(machines) if r != worker_rank)
        raise SystemExit(
            f"--machine-rank {args.machine_rank}: run {args.run_id} spans {machines} machines "
            f"and its worker runs rank {worker_rank}; expected one of {others}"
        )
    cmd, env = launch_command(run, home, gpus, free_port(), machine_rank=args.machine_rank)
    if args.print:
        print(" ".join(cmd))
        return 0
    os.chdir(Path(__file__).resolve().parent.parent)  # where `-m engine.train` imports from
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


if __name__ == "__main__":
    sys.exit(main())
