"""How a run is launched (engine.launch): the device × processes matrix on machines with and
without GPUs, mixed precision the device cannot do, accelerate config files, and several
machines.

The matrix is checked on the built command line with the GPU count injected; on this machine
`accelerate launch` is also run for real: with a probe script (how many processes start, as what,
and that a user's default accelerate config does not leak in), and with the trainer (two CPU
processes for a device=auto run; two "machines" on 127.0.0.1 joined with `engine.launch`).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from factories import ADMIN, write_digits_imagefolder

from engine import store
from engine.config import ConfigError, RunConfig
from engine.launch import (
    LAUNCHED_ENV,
    NEUTRAL_CONFIG,
    LaunchError,
    check_launch,
    free_port,
    gpus_needed,
    launch_command,
    list_accelerate_configs,
    physical_gpu_ids,
    processes_per_machine,
    resolve_accelerate_config,
    trains_on_cpu,
)
from engine.timings import LAUNCHED_AT_ENV
from engine.worker import Worker

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "model": "efficientnet_b0", "pretrained": False, "image_size": 32, "batch_size": 8,
    "num_workers": 0, "metric": "accuracy", "seed": 1, "epochs": 1, "early_stopping": False,
}  # fmt: skip


def run_row(**cfg):
    return {"id": 7, "resume_requested": 0, "config": {"num_processes": 1, **cfg}}


def flag(cmd, name):
    return cmd[cmd.index(name) + 1] if name in cmd else None


@pytest.fixture(autouse=True)
def no_inherited_launch_env(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "ACCELERATE_USE_CPU"):
        monkeypatch.delenv(name, raising=False)


# -- the matrix, on the command line ---------------------------------------------------------

# (GPUs on the machine, device, num_processes) → GPUs taken (or the key refused), launch mode.
MATRIX = [
    (0, "auto", 1, 0, "--cpu"),
    (0, "auto", 2, 0, "--multi_gpu"),  # the bug: two independent trainings
    (0, "cpu", 1, 0, "--cpu"),
    (0, "cpu", 2, 0, "--multi_gpu"),
    (0, "cuda", 1, "device", None),
    (0, "cuda", 2, "device", None),
    (2, "auto", 1, 1, None),
    (2, "auto", 2, 2, "--multi_gpu"),
    (2, "cuda", 1, 1, None),
    (2, "cuda", 2, 2, "--multi_gpu"),
    (2, "cpu", 1, 0, "--cpu"),
    (2, "cpu", 2, 0, "--multi_gpu"),
    (1, "auto", 2, "num_processes", None),
    (1, "cuda", 2, "num_processes", None),
]


@pytest.mark.parametrize("gpus_here, device, procs, taken, mode", MATRIX)
def test_launch_matrix(home, gpus_here, device, procs, taken, mode):
    run = run_row(device=device, num_processes=procs)
    if isinstance(taken, str):
        with pytest.raises(LaunchError) as refused:
            gpus_needed(run["config"], gpus_here)
        assert refused.value.field == taken and str(procs if taken != "device" else "cuda") in str(
            refused.value
        )
        return
    assert gpus_needed(run["config"], gpus_here) == taken
    # One process starts the trainer itself (below: in accelerate's environment); the
    # accelerate command line is still what several processes and config files get.
    direct, _ = launch_command(run, home, list(range(taken)), 29500)
    assert (direct[1:3] == ["-m", "engine.train"]) == (procs == 1)
    cmd, env = launch_command(run, home, list(range(taken)), 29500, direct=False)
    assert flag(cmd, "--num_processes") == str(procs) and flag(cmd, "--num_machines") == "1"
    # Every launch names its config file: a user's default one is never read.
    assert flag(cmd, "--config_file") == str(NEUTRAL_CONFIG)
    assert ("--cpu" in cmd) == (mode == "--cpu")
    assert ("--multi_gpu" in cmd) == (mode == "--multi_gpu")
    on_cpu = taken == 0
    # The trainer's Accelerator decides CPU alike from the device and the GPUs it sees.
    assert trains_on_cpu(device, gpus_here if not on_cpu else 0) == on_cpu
    if on_cpu:
        assert env["CUDA_VISIBLE_DEVICES"] == "" and env["ACCELERATE_USE_CPU"] == "true"
        assert "--gpu_ids" not in cmd
        threads = int(flag(cmd, "--num_cpu_threads_per_process"))
        assert threads == max(1, (os.cpu_count() or 1) // procs)
    else:
        ids = ",".join(str(g) for g in range(taken))
        assert env["CUDA_VISIBLE_DEVICES"] == ids and flag(cmd, "--gpu_ids") == ids
        assert "ACCELERATE_USE_CPU" not in env
    assert cmd[-4:] == ["--run-id", "7", "--home", str(home)]


def test_gpu_ids_name_the_gpus_handed_out_not_the_first_ones(home, monkeypatch):
    # accelerate copies --gpu_ids into the child's CUDA_VISIBLE_DEVICES: "0,1" there would put
    # a run handed GPUs 2 and 3 on 0 and 1.
    cmd, env = launch_command(run_row(num_processes=2), home, [2, 3], 29500)
    assert flag(cmd, "--gpu_ids") == env["CUDA_VISIBLE_DEVICES"] == "2,3"
    # A worker started on a subset of the GPUs counts them from 0.
    assert physical_gpu_ids([1, 2], {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}) == ["5", "6"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    _, env = launch_command(run_row(), home, [3], 29500)
    assert env["CUDA_VISIBLE_DEVICES"] == "7"


def test_precision_and_resume_flags(home):
    cmd, _ = launch_command(run_row(mixed_precision="bf16", num_processes=2), home, [0, 1], 1)
    assert flag(cmd, "--mixed_precision") == "bf16"
    resumed, _ = launch_command({**run_row(), "resume_requested": 1}, home, [0], 29500)
    assert resumed[-1] == "--resume"
    cmd, _ = launch_command(run_row(), home, [], 31000, direct=False)
    assert flag(cmd, "--main_process_port") == "31000"
    cmd, _ = launch_command(run_row(main_process_port=31001), home, [], 31000, direct=False)
    assert flag(cmd, "--main_process_port") == "31001"
    direct, _ = launch_command({**run_row(), "resume_requested": 1}, home, [], 31000)
    assert direct == [sys.executable, "-m", "engine.train", "--run-id", "7", "--home", str(home),
                      "--resume"]  # fmt: skip


@pytest.mark.parametrize(
    "gpus, precision, omp_threads",
    [
        ((), "no", None),
        ((), "bf16", None),
        ((), "no", "1"),
        ((0,), "fp16", None),
        ((1,), "no", "3"),
    ],
)
def test_a_one_process_run_starts_the_trainer_in_the_environment_accelerate_gives_it(
    home, monkeypatch, gpus, precision, omp_threads
):
    """The direct launch is accelerate's simple launcher without its interpreter: accelerate's
    own code, given the command line of the accelerate path, builds the same command and the
    same environment."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_simple_launcher_cmd_env

    if omp_threads:
        monkeypatch.setenv("OMP_NUM_THREADS", omp_threads)
    else:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    run = run_row(mixed_precision=precision)
    via, via_env = launch_command(run, home, list(gpus), 29500, direct=False)
    direct, direct_env = launch_command(run, home, list(gpus), 29500)
    for name in set(os.environ) - set(via_env):
        monkeypatch.delenv(name)
    for name, value in via_env.items():
        monkeypatch.setenv(name, value)
    args, _, _ = _validate_launch_command(launch_command_parser().parse_args(via[3:]))
    cmd, env = prepare_simple_launcher_cmd_env(args)
    assert cmd == direct
    for stamp in (LAUNCHED_ENV, LAUNCHED_AT_ENV):  # how it was started, and when
        env.pop(stamp), direct_env.pop(stamp)
    assert env == direct_env


# -- mixed precision the device cannot do ----------------------------------------------------


def test_fp16_on_the_cpu_is_refused_and_bf16_is_not():
    assert gpus_needed({"device": "auto", "mixed_precision": "bf16"}, 0) == 0
    assert gpus_needed({"device": "auto", "mixed_precision": "fp16"}, 1) == 1
    with pytest.raises(LaunchError) as refused:
        gpus_needed({"device": "auto", "mixed_precision": "fp16"}, 0)
    assert refused.value.field == "mixed_precision"
    assert "device=auto and this machine has no GPU" in str(refused.value)
    assert "no or bf16" in str(refused.value)
    # device=cpu is known without the machine: RunConfig refuses it.
    with pytest.raises(ConfigError) as invalid:
        RunConfig.from_dict({"dataset": "d", "device": "cpu", "mixed_precision": "fp16"})
    assert "mixed_precision" in invalid.value.by_field()


def test_preflight_refuses_fp16_when_auto_means_the_cpu(home, db, tmp_path, monkeypatch):
    from engine import preflight

    data = write_digits_imagefolder(tmp_path / "digits", per_class=4, classes=range(2))
    monkeypatch.setattr(preflight, "gpu_count", lambda: 0)
    cfg = RunConfig.from_dict({**TINY, "dataset": str(data), "mixed_precision": "fp16"})
    problems = preflight.check_run(cfg, db)
    assert [p.field for p in problems] == ["mixed_precision"], problems
    monkeypatch.setattr(preflight, "gpu_count", lambda: 1)
    assert preflight.check_run(cfg, db) == []


def test_the_worker_fails_a_run_it_cannot_train_naming_the_key(home, db):
    run_id = store.create_run(db, {**TINY, "dataset": "d", "mixed_precision": "fp16"}, by=ADMIN)
    worker = Worker(home)
    worker.gpus = []
    assert worker.start_next() is False
    run = store.get_run(db, run_id)
    assert run["status"] == "failed" and run["error"].startswith("mixed_precision=fp16")
    store.create_run(db, {**TINY, "dataset": "d", "device": "cuda"}, by=ADMIN)
    worker.start_next()
    assert "device=cuda" in store.list_runs(db, status="failed")[0]["error"]
    worker.db.conn.close()


# -- validation of the machine keys ----------------------------------------------------------


@pytest.mark.parametrize(
    "keys, field",
    [
        ({"num_machines": 2, "machine_rank": 2, "main_process_ip": "h"}, "machine_rank"),
        ({"machine_rank": 1}, "machine_rank"),
        ({"num_machines": 2}, "main_process_ip"),
        ({"num_machines": 0}, "num_machines"),
        ({"main_process_port": 70000}, "main_process_port"),
        ({"accelerate_config": "/a.yaml", "num_processes": 2}, "num_processes"),
        ({"accelerate_config": "/a.yaml", "main_process_port": 1234}, "main_process_port"),
    ],
)
def test_machine_keys_are_validated(keys, field):
    with pytest.raises(ConfigError) as invalid:
        RunConfig.from_dict({"dataset": "d", **keys})
    assert field in invalid.value.by_field(), invalid.value


def test_two_machines_are_valid():
    cfg = RunConfig.from_dict(
        {"dataset": "d", "num_machines": 2, "machine_rank": 1, "main_process_ip": "10.0.0.1"}
    )
    assert cfg.main_process_port is None


def test_multi_node_flags(home):
    run = run_row(num_processes=2, num_machines=2, main_process_ip="10.0.0.1")
    cmd, _ = launch_command(run, home, [0, 1], 40000)
    # accelerate counts the processes of every machine; ours are per machine.
    assert flag(cmd, "--num_processes") == "4" and flag(cmd, "--num_machines") == "2"
    assert flag(cmd, "--machine_rank") == "0" and flag(cmd, "--main_process_ip") == "10.0.0.1"
    # Every machine must know the port: a fixed one, not this machine's free one.
    assert flag(cmd, "--main_process_port") == "29500"
    joined, _ = launch_command(run, home, [0, 1], 40000, machine_rank=1)
    assert flag(joined, "--machine_rank") == "1"
    # One process on each of two machines is still a distributed launch.
    cmd, _ = launch_command(run_row(num_machines=2, main_process_ip="h"), home, [], 1)
    assert "--multi_gpu" in cmd and "--cpu" not in cmd


def test_a_second_machine_joins_with_a_rank_the_worker_does_not_run(home, db, capsys):
    from engine.launch import main

    one = store.create_run(db, {**TINY, "dataset": "d"}, by=ADMIN)
    with pytest.raises(SystemExit, match="nothing to join"):
        main(["--run-id", str(one), "--machine-rank", "1", "--home", str(home)])
    two = store.create_run(
        db, {**TINY, "dataset": "d", "num_machines": 2, "main_process_ip": "10.0.0.1"}, by=ADMIN
    )
    with pytest.raises(SystemExit, match="its worker runs rank 0; expected one of 1"):
        main(["--run-id", str(two), "--machine-rank", "0", "--home", str(home)])
    assert main(["--run-id", str(two), "--machine-rank", "1", "--home", str(home), "--print"]) == 0
    printed = capsys.readouterr().out.split()
    assert flag(printed, "--machine_rank") == "1" and flag(printed, "--num_machines") == "2"


# -- accelerate config files -----------------------------------------------------------------

TWO_GPUS = "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 4\nnum_machines: 2\nmachine_rank: 0\nmain_process_ip: 10.0.0.1\nmain_process_port: 29501\n"


def test_a_config_file_is_passed_through_instead_of_the_worker_flags(home):
    folder = home / "accelerate"
    folder.mkdir()
    (folder / "two_nodes.yaml").write_text(TWO_GPUS)
    (folder / "notes.txt").write_text("not a config")
    assert [p.name for p in list_accelerate_configs(home)] == ["two_nodes.yaml"]
    path = resolve_accelerate_config("two_nodes.yaml", home)
    assert path == str(folder / "two_nodes.yaml")
    run = run_row(accelerate_config=path, mixed_precision="bf16", device="cuda")
    assert processes_per_machine(run["config"]) == 2
    assert gpus_needed(run["config"], 4) == 2
    cmd, env = launch_command(run, home, [1, 2], 29500)
    assert flag(cmd, "--config_file") == path
    for own in ("--num_processes", "--num_machines", "--main_process_ip", "--multi_gpu", "--cpu"):
        assert own not in cmd, own
    # The worker's GPUs and the run's precision still hold.
    assert flag(cmd, "--gpu_ids") == env["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert flag(cmd, "--mixed_precision") == "bf16"
    joined, _ = launch_command(run, home, [0, 1], 29500, machine_rank=1)
    assert flag(joined, "--machine_rank") == "1"


def test_the_new_run_form_offers_the_config_files_and_queues_one(home, db, tmp_path):
    from streamlit.testing.v1 import AppTest

    (home / "accelerate").mkdir()
    (home / "accelerate" / "one_gpu.yaml").write_text("distributed_type: 'NO'\n")
    data = write_digits_imagefolder(tmp_path / "digits", per_class=4, classes=range(2))
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/new_run.py").run()
    box = at.selectbox(key="cfg_accelerate_config")
    path = str(home / "accelerate" / "one_gpu.yaml")
    assert box.options == ["none: the worker's own flags", "one_gpu.yaml"]
    at.selectbox(key="cfg_dataset_choice").set_value("a path on the server…").run()
    at.text_input(key="cfg_dataset_path").set_value(str(data))
    at.selectbox(key="cfg_model").set_value("efficientnet_b0")
    at.checkbox(key="cfg_pretrained").uncheck()
    at.selectbox(key="cfg_accelerate_config").set_value(path)
    at.text_input(key="cfg_main_process_ip").set_value("10.0.0.1")  # refused with the file
    at.button(key="queue_run").click().run()
    assert not at.exception and store.list_runs(db) == []
    assert any("main_process_ip" in e.value for e in at.error)
    at.text_input(key="cfg_main_process_ip").set_value("")
    at.button(key="queue_run").click().run()
    assert [r["config"]["accelerate_config"] for r in store.list_runs(db)] == [path]


def test_the_configs_folder_can_be_set(home, tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONBOARD_ACCELERATE_CONFIGS", str(tmp_path / "team"))
    assert list_accelerate_configs(home) == []
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "a.yml").write_text(TWO_GPUS)
    assert [p.name for p in list_accelerate_configs(home)] == ["a.yml"]
    assert resolve_accelerate_config("a.yml", home) == str(tmp_path / "team" / "a.yml")
    # Not a name in the folder: a path from here, made absolute.
    assert resolve_accelerate_config("b.yaml", home) == os.path.abspath("b.yaml")


def test_a_missing_or_broken_config_file_is_refused_before_queueing(home, tmp_path):
    missing = check_launch({"accelerate_config": str(tmp_path / "gone.yaml")}, 0, home)
    assert missing.field == "accelerate_config" and "gone.yaml does not exist" in str(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("num_processes: 2\n")
    problem = check_launch({"accelerate_config": str(broken)}, 0, home)
    assert problem.field == "accelerate_config" and "distributed_type" in str(problem)
    cpu = tmp_path / "cpu.yaml"
    cpu.write_text("distributed_type: MULTI_CPU\nuse_cpu: true\nnum_processes: 2\n")
    problem = check_launch({"accelerate_config": str(cpu), "mixed_precision": "fp16"}, 1, home)
    assert problem.field == "mixed_precision"


# -- real launches on this machine -----------------------------------------------------------

PROBE = r"""
import os
from accelerate import Accelerator
a = Accelerator()  # what the trainer's device=auto asked for before: no cpu=True
debug = os.environ.get("ACCELERATE_DEBUG_MODE", "off")
line = f"PROBE {a.distributed_type} {a.num_processes} {a.process_index} {a.device.type} {debug}"
os.write(1, (line + "\n").encode())  # one write: two ranks share the pipe, print() interleaves
"""


def probe(home, tmp_path, run, gpus=(), machine_rank=None, env_extra=None):
    """Run the launch with a probe script in place of the trainer; its PROBE lines."""
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    cmd, env = launch_command(run, home, list(gpus), free_port(), machine_rank=machine_rank)
    cmd = cmd[: cmd.index("engine.train") - 1] + [str(script)]
    done = subprocess.run(
        cmd, env={**env, **(env_extra or {})}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return sorted(line for line in done.stdout.splitlines() if line.startswith("PROBE"))


@pytest.mark.slow
@pytest.mark.parametrize("procs", [1, 2])
def test_cpu_launches_start_that_many_cpu_processes_and_ignore_a_default_config(
    home, tmp_path, procs
):
    # A user's default accelerate config for a GPU box: read, its gpu_ids stop a 2-process
    # launch ("Less than two GPU ids") and its debug mode slows every collective.
    hf_home = tmp_path / "hf"
    (hf_home / "accelerate").mkdir(parents=True)
    (hf_home / "accelerate" / "default_config.yaml").write_text(
        "compute_environment: LOCAL_MACHINE\ndistributed_type: MULTI_GPU\nnum_processes: 2\n"
        "num_machines: 2\nmachine_rank: 1\nmain_process_ip: 10.9.9.9\nmain_process_port: 29999\n"
        'gpu_ids: "0"\ndebug: true\n'
    )
    lines = probe(
        home,
        tmp_path,
        run_row(device="auto", num_processes=procs),
        env_extra={"HF_HOME": str(hf_home)},
    )
    kind = "DistributedType.MULTI_CPU" if procs > 1 else "DistributedType.NO"
    assert lines == [f"PROBE {kind} {procs} {rank} cpu off" for rank in range(procs)]


def cuda_count() -> int:
    import torch

    return torch.cuda.device_count()


@pytest.mark.slow
@pytest.mark.skipif(cuda_count() == 0, reason="needs a GPU")
@pytest.mark.parametrize(
    "device, procs, expected",
    [
        ("auto", 1, "DistributedType.NO 1 0 cuda off"),
        ("cuda", 1, "DistributedType.NO 1 0 cuda off"),
        ("cpu", 1, "DistributedType.NO 1 0 cpu off"),
        ("cpu", 2, "DistributedType.MULTI_CPU 2 {rank} cpu off"),
        ("auto", 2, "DistributedType.MULTI_GPU 2 {rank} cuda off"),
    ],
)
def test_gpu_machine_launches(home, tmp_path, device, procs, expected):
    config = run_row(device=device, num_processes=procs)["config"]
    try:
        taken = gpus_needed(config, cuda_count())
    except LaunchError:
        pytest.skip(f"{procs} processes need {procs} GPUs")
    lines = probe(home, tmp_path, run_row(**config), gpus=range(taken))
    assert lines == [f"PROBE {expected.format(rank=rank)}" for rank in range(procs)]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits_imagefolder(
        tmp_path_factory.mktemp("data") / "digits", per_class=8, classes=range(2)
    )


def queue(home, dataset, **keys) -> int:
    config = RunConfig.from_dict({**TINY, "dataset": str(dataset), **keys}).resolved()
    db = store.connect(home)
    run_id = store.create_run(db, config, by=ADMIN)
    store.claim_run(db, "test", run_id=run_id)
    return run_id


def start(cmd, env, log):
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
    )


def finish(processes, logs, seconds=300):
    try:
        for process, log in zip(processes, logs):
            assert process.wait(seconds) == 0, Path(log.name).read_text()
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
                process.wait()


@pytest.mark.slow
def test_device_auto_with_two_processes_on_a_machine_without_gpu_trains_once(
    home, digits, tmp_path
):
    run_id = queue(home, digits, device="auto", num_processes=2)
    run = store.get_run(store.connect(home), run_id)
    cmd, env = launch_command(run, home, [], free_port())
    with open(tmp_path / "train.log", "w") as log:
        finish([start(cmd, env, log)], [log])
    shown = store.get_run(store.connect(home), run_id)
    summary = shown["summary"]
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 16, summary
    assert summary["stop_reason"] == "epoch limit"
    # One trainer wrote: one row per epoch metric, not one per process.
    assert len(store.get_metrics(store.connect(home), run_id, ["test_accuracy"])) == 1


@pytest.mark.slow
def test_two_machines_on_localhost_train_one_run(home, digits, tmp_path):
    port = free_port()
    run_id = queue(
        home, digits, num_machines=2, main_process_ip="127.0.0.1", main_process_port=port
    )
    run = store.get_run(store.connect(home), run_id)
    # The worker's host launches rank 0; the second "machine" joins as the README says.
    cmd, env = launch_command(run, home, [], free_port())
    join = [sys.executable, "-m", "engine.launch", "--run-id", str(run_id), "--machine-rank", "1"]
    join += ["--home", str(home)]
    joined_env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    with open(tmp_path / "rank0.log", "w") as log0, open(tmp_path / "rank1.log", "w") as log1:
        processes = [start(cmd, env, log0), start(join, joined_env, log1)]
        finish(processes, [log0, log1])
    summary = store.get_run(store.connect(home), run_id)["summary"]
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 16, summary
    assert summary["stop_reason"] == "epoch limit"
    assert "2 process(es)" in (tmp_path / "rank0.log").read_text()


# -- config files: ports and broken fields ----------------------------------------------------

ONE_MACHINE = "distributed_type: MULTI_GPU\nnum_processes: 2\nnum_machines: 1\n"


def test_a_one_machine_config_file_gets_the_free_port_unless_it_names_one(tmp_path, home):
    # Two such runs on one host used to both take accelerate's 29500.
    plain = tmp_path / "plain.yaml"
    plain.write_text(ONE_MACHINE)
    cmd, _ = launch_command(run_row(accelerate_config=str(plain)), home, [0, 1], 41234)
    assert flag(cmd, "--main_process_port") == "41234"
    named = tmp_path / "named.yaml"
    named.write_text(ONE_MACHINE + "main_process_port: 29777\n")
    cmd, _ = launch_command(run_row(accelerate_config=str(named)), home, [0, 1], 41234)
    assert "--main_process_port" not in cmd  # the file's port holds
    two = tmp_path / "two.yaml"
    two.write_text(TWO_GPUS.replace("main_process_port: 29501\n", ""))
    cmd, _ = launch_command(run_row(accelerate_config=str(two)), home, [0, 1], 41234)
    assert "--main_process_port" not in cmd  # every machine must agree on it: not ours to pick


def test_a_config_file_with_a_bad_number_is_refused_naming_the_file_and_key(tmp_path, home, db):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distributed_type: MULTI_GPU\nnum_processes: two\n")
    problem = check_launch({"accelerate_config": str(bad)}, 0, home)
    assert problem.field == "accelerate_config"
    assert str(problem) == (
        f"{bad}: num_processes='two' is not a whole number; expected e.g. num_processes: 1"
    )
    with pytest.raises(LaunchError, match="num_processes='two'"):
        processes_per_machine({"accelerate_config": str(bad)})
    # The worker fails that run with the error and goes on with the queue (it used to crash,
    # and `serve` restarted it into the same crash).
    base = {"task": "classification", "model": "m", "dataset": "d"}
    broken = store.create_run(db, {**base, "accelerate_config": str(bad)}, by=ADMIN)
    worker = Worker(home)
    worker.launch = lambda run, gpus: worker.finish(run["id"], "completed")  # no trainer
    assert worker.start_next() is False
    run = store.get_run(db, broken)
    assert run["status"] == "failed" and "num_processes='two'" in run["error"]
    after = store.create_run(db, base, by=ADMIN)
    assert worker.start_next() is True
    assert store.get_run(db, after)["status"] == "completed"


def test_any_error_preparing_a_run_fails_that_run_not_the_worker(home, db, monkeypatch):
    import engine.worker

    def broken(*args, **kwargs):
        raise KeyError("main_process_ip")

    monkeypatch.setattr(engine.worker, "launch_command", broken)
    base = {"task": "classification", "model": "m", "dataset": "d", "device": "cpu"}
    run_id = store.create_run(db, base, by=ADMIN)
    Worker(home, only_run=run_id).run()
    run = store.get_run(db, run_id)
    assert run["status"] == "failed"
    assert run["error"] == "could not build the launch command: 'main_process_ip'"
