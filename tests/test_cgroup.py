"""One cgroup reader for forensics' OOM verdict and the doctor's limits checks: in a
nested cgroup both read this process's own chain, so they agree, and not the root's."""

from __future__ import annotations

from pathlib import Path

from tracedpool._diagnosis import cgroup, forensics

MiB = 1 << 20
UNLIMITED_V1 = "9223372036854771712"  # what v1 writes when no limit is set


def _write(directory: Path, files: dict[str, str]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text + "\n", encoding="ascii")


def _v2_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A v2 hierarchy: the mount's root (no limit, no OOM kill) > a slice limited to
    1 GiB > this process's scope, limited to 256 MiB, where 3 OOM kills happened."""
    root = tmp_path / "cgroup"
    _write(root, {"memory.events": "oom 0\noom_kill 0", "cpu.max": "max 100000"})
    _write(
        root / "batch.slice",
        {"memory.max": str(1024 * MiB), "memory.events": "oom 3\noom_kill 3"},
    )
    _write(
        root / "batch.slice" / "job-7.scope",
        {
            "memory.max": str(256 * MiB),
            "memory.current": str(200 * MiB),
            "memory.stat": f"anon {50 * MiB}\ninactive_file {120 * MiB}",
            "memory.events": "low 0\nhigh 0\nmax 9\noom 3\noom_kill 3",
            "cpu.max": "150000 100000",
        },
    )
    proc_self = tmp_path / "proc-self-cgroup"
    proc_self.write_text("0::/batch.slice/job-7.scope\n")
    return root, proc_self


def _v1_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A v1 layout like a batch system's: memory and cpu,cpuacct hierarchies, this
    process two levels down in each; the root has no limit and saw no OOM kill."""
    root = tmp_path / "cgroup"
    memory = root / "memory"
    _write(
        memory,
        {
            "memory.limit_in_bytes": UNLIMITED_V1,
            "memory.usage_in_bytes": str(4096 * MiB),
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0",
        },
    )
    _write(memory / "process_api", {"memory.limit_in_bytes": UNLIMITED_V1})
    _write(
        memory / "process_api" / "job",
        {
            "memory.limit_in_bytes": str(512 * MiB),
            "memory.usage_in_bytes": str(300 * MiB),
            "memory.stat": f"cache {10 * MiB}\ntotal_inactive_file {100 * MiB}",
            "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2",
        },
    )
    cpu = root / "cpu,cpuacct"
    _write(cpu, {"cpu.cfs_quota_us": "-1", "cpu.cfs_period_us": "100000"})
    _write(
        cpu / "process_api" / "job", {"cpu.cfs_quota_us": "50000", "cpu.cfs_period_us": "100000"}
    )
    proc_self = tmp_path / "proc-self-cgroup"
    proc_self.write_text(
        "9:pids:/\n4:memory:/process_api/job\n2:cpu,cpuacct:/process_api/job\n0::/\n"
    )
    return root, proc_self


def test_nested_v2_cgroup_is_read_from_the_process_own_chain(tmp_path: Path) -> None:
    """Forensics and the doctor read the nested v2 scope: the tightest limit (256 MiB,
    not the slice's 1 GiB nor the root's none) and its OOM kills (3, not the root's 0)."""
    root, proc_self = _v2_tree(tmp_path)
    where = {"root": root, "proc_self": proc_self}
    assert cgroup.own_paths("memory", **where) == [
        root / "batch.slice" / "job-7.scope",
        root / "batch.slice",
        root,
    ]
    doctor_limit, usage, inactive = cgroup.memory(**where)
    assert (doctor_limit, usage, inactive) == (256 * MiB, 200 * MiB, 120 * MiB)
    assert forensics.cgroup_memory_limit(**where) == doctor_limit
    assert forensics.cgroup_oom_kills(**where) == 3
    assert cgroup.cpu_quota(**where) == 1.5
    # What the root alone says, which forensics used to read: no limit, no OOM kill.
    assert cgroup.memory_stat_value((root / "memory.events").read_text(), "oom_kill") == 0
    assert not (root / "memory.max").exists()


def test_nested_v1_cgroup_is_read_from_the_process_own_chain(tmp_path: Path) -> None:
    """The same in a v1 layout (one hierarchy per controller, ``cpu,cpuacct`` mounted
    together): the job's 512 MiB limit and its 2 OOM kills, where the root has neither."""
    root, proc_self = _v1_tree(tmp_path)
    where = {"root": root, "proc_self": proc_self}
    doctor_limit, usage, inactive = cgroup.memory(**where)
    assert (doctor_limit, usage, inactive) == (512 * MiB, 300 * MiB, 100 * MiB)
    assert forensics.cgroup_memory_limit(**where) == doctor_limit
    assert forensics.cgroup_oom_kills(**where) == 2
    assert cgroup.cpu_quota(**where) == 0.5


def test_a_host_path_missing_under_the_mount_falls_back_to_its_root(tmp_path: Path) -> None:
    """A container without its own cgroup namespace sees the host's path (/docker/<id>),
    absent under its mount: the mount's root, the container's cgroup, is read."""
    root = tmp_path / "cgroup"
    _write(root, {"memory.max": str(768 * MiB), "memory.events": "oom_kill 1"})
    proc_self = tmp_path / "proc-self-cgroup"
    proc_self.write_text("0::/docker/0123abcd\n")
    where = {"root": root, "proc_self": proc_self}
    assert forensics.cgroup_memory_limit(**where) == 768 * MiB
    assert forensics.cgroup_oom_kills(**where) == 1


def test_no_cgroup_file_is_no_fact_not_an_error(tmp_path: Path) -> None:
    """An unreadable /proc/self/cgroup, or a tree without limits, gives None everywhere."""
    where = {"root": tmp_path / "cgroup", "proc_self": tmp_path / "missing"}
    assert cgroup.own_paths("memory", **where) == []
    assert cgroup.memory(**where) == (None, None, None)
    assert forensics.cgroup_oom_kills(**where) is None
    assert forensics.cgroup_memory_limit(**where) is None
    assert cgroup.cpu_quota(**where) is None
