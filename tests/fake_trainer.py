"""A stand-in for `accelerate launch -m engine.train`, without torch, for the worker's faults.

    python tests/fake_trainer.py HOME RUN_ID SECONDS [--launcher]
    python tests/fake_trainer.py cli SECONDS VISIONBOARD_ARGS...
    python tests/fake_trainer.py cli-shell SECONDS VISIONBOARD_ARGS...

With --launcher it starts itself again as its one trainer process, in its process group (like
accelerate launch), and waits for it. The trainer writes its pid to <run>/trainer.pid, beats
like the real one, stops at a cancel (stop_reason "cancelled") and after SECONDS ends with
stop_reason "epoch limit". `cli` runs `visionboard ARGS` (a worker, a train command) whose
workers launch this fake instead of accelerate. `cli-shell` launches only a shell that notes
each start in <run>/launches and sleeps SECONDS (exit 0: completed), for tests of the queue
that start many runs.
"""

import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import store  # noqa: E402
from engine.run_folder import RunFolder  # noqa: E402

BEAT_SECONDS = 0.2


def fake_launch_command(seconds: float):
    """A replacement for engine.launch.launch_command that starts this fake."""

    def launch_command(run, home, gpus, port, **_):
        command = [sys.executable, __file__, str(home), str(run["id"]), str(seconds)]
        return [*command, "--launcher"], dict(os.environ)

    return launch_command


def shell_launch_command(seconds: float):
    """A replacement for engine.launch.launch_command that starts a shell, not python."""

    def launch_command(run, home, gpus, port, **_):
        launches = RunFolder(Path(home), run["id"]).path / "launches"
        return ["sh", "-c", f'echo "$$" >> "{launches}"; sleep {seconds}'], dict(os.environ)

    return launch_command


def main() -> int:
    if sys.argv[1] in ("cli", "cli-shell"):
        from engine import cli, worker

        fake = fake_launch_command if sys.argv[1] == "cli" else shell_launch_command
        worker.launch_command = fake(float(sys.argv[2]))
        return cli.main(sys.argv[3:])
    home, run_id, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if "--launcher" in sys.argv:
        trainer = subprocess.Popen([sys.executable, __file__, home, str(run_id), str(seconds)])
        return trainer.wait()
    db = store.connect(home)
    (RunFolder(Path(home), run_id).create().path / "trainer.pid").write_text(str(os.getpid()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if store.cancel_requested(db, run_id):
            store.update_summary(db, run_id, stop_reason="cancelled")
            return 0
        store.heartbeat(db, run_id)
        time.sleep(BEAT_SECONDS)
    store.update_summary(db, run_id, stop_reason="epoch limit", epochs_trained=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
