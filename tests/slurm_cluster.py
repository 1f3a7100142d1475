"""A real one-node Slurm cluster on this machine, for the tests of `study --executor slurm`.

`one_node_cluster(folder)` installs Debian's Slurm and munge when they are absent (apt-get, as root), writes a
slurm.conf under `folder` for this host alone (CPU only, at least 8 CPUs), starts munged, slurmctld and slurmd,
waits until the node is idle, yields the environment the Slurm commands need (SLURM_CONF), and stops the daemons
afterwards — whatever the test did. `python -m tests.slurm_cluster FOLDER` starts one by hand until Ctrl-C.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PACKAGES = ("slurm-wlm", "munge")
DAEMONS = ("slurmd", "slurmctld", "munged")


def install() -> None:
    """Debian's Slurm and munge, unless both are already there."""
    if all(shutil.which(name) for name in ("slurmctld", "slurmd", "sbatch", "munged")):
        return
    if os.geteuid() != 0:
        raise RuntimeError("Slurm is not installed and installing it needs root: apt-get install slurm-wlm munge")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=environment)
    subprocess.run(["apt-get", "install", "-y", "-qq", *PACKAGES], check=True, env=environment)


def slurm_conf(folder: Path, host: str, cpus: int, memory_mb: int) -> str:
    return "\n".join(
        [
            "ClusterName=scratchdet-test",
            f"SlurmctldHost={host}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            "MpiDefault=none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            # More CPUs than the machine has, so that a few small jobs run side by side (no binding here).
            "SlurmdParameters=config_overrides",
            "SchedulerType=sched/backfill",
            "SchedulerParameters=bf_interval=2,sched_interval=2",  # start a requeued job within seconds, not a minute
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "JobAcctGatherType=jobacct_gather/none",
            # A requeued job may start again after `cred_expire` seconds (default 120): short, for a short test.
            "AuthInfo=cred_expire=10",
            "KillWait=30",
            "MinJobAge=600",
            f"SlurmctldPidFile={folder}/slurmctld.pid",
            f"SlurmdPidFile={folder}/slurmd.pid",
            f"SlurmdSpoolDir={folder}/slurmd",
            f"StateSaveLocation={folder}/state",
            f"SlurmctldLogFile={folder}/slurmctld.log",
            f"SlurmdLogFile={folder}/slurmd.log",
            f"NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def _memory_mb() -> int:
    with open("/proc/meminfo") as meminfo:
        total_kb = int(next(line for line in meminfo if line.startswith("MemTotal")).split()[1])
    return max(1000, total_kb // 1024 - 2000)


def _stop_daemons() -> None:
    for name in DAEMONS:
        subprocess.run(["pkill", "-x", name], check=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        subprocess.run(["pgrep", "-x", name], capture_output=True).returncode == 0 for name in DAEMONS
    ):
        time.sleep(0.2)
    for name in DAEMONS:
        subprocess.run(["pkill", "-9", "-x", name], check=False)


def _wait_until_idle(environment: dict[str, str], folder: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    state = ""
    while time.monotonic() < deadline:
        result = subprocess.run(
            ["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, env=environment, check=False
        )
        state = result.stdout.strip()
        if state == "idle":
            return
        time.sleep(0.5)
    logs = "\n".join(
        (folder / name).read_text()[-2000:] for name in ("slurmctld.log", "slurmd.log") if (folder / name).is_file()
    )
    raise RuntimeError(f"the test Slurm node is not idle after {seconds:.0f} s (sinfo: {state!r}):\n{logs}")


@contextmanager
def one_node_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """Start a one-node Slurm cluster configured under `folder`; yields the environment for its commands."""
    install()
    folder = Path(folder).resolve()
    for sub in ("slurmd", "state"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    host = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, host, max(8, os.cpu_count() or 1), _memory_mb()))
    environment = {**os.environ, "SLURM_CONF": str(conf)}
    _stop_daemons()  # a cluster left by an earlier, killed test
    try:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["munged", "--force"], check=True, env=environment)
        subprocess.run(["slurmctld", "-c"], check=True, env=environment)  # -c: no state from an earlier cluster
        subprocess.run(["slurmd"], check=True, env=environment)
        _wait_until_idle(environment, folder)
        yield environment
    finally:
        _stop_daemons()


if __name__ == "__main__":
    with one_node_cluster(Path(sys.argv[1])) as env:
        print(f"export SLURM_CONF={env['SLURM_CONF']}", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
