"""OpenMP thread settings, decided before ``import torch`` (libgomp reads them when it loads).

``OMP_WAIT_POLICY`` decides what an OpenMP thread does between parallel regions: spin
(``ACTIVE``) or sleep (``PASSIVE``). A training step runs hundreds of small regions, so
with sleeping threads every one pays a wake-up (fbgemm's fused row-wise Adagrad backward:
5.2 ms per step instead of 0.7 ms). Sleeping only pays off when the threads of all
processes on the node, with what else is running there, outnumber its cores: then a
spinning thread holds a core that another thread is waiting for, and a barrier waits for a
thread the scheduler has put aside (measured under load 5 on 2 cores: 7x to 60x slower
than sleeping). The policy is chosen from those counts at startup; a value the user set in
the environment is always kept.

Imports nothing but the standard library: the package's ``__init__`` and the CLI call
:func:`configure_threads` before anything imports torch.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from typing import Mapping, MutableMapping, Optional

__all__ = [
    "ThreadPolicy",
    "available_cores",
    "busy_threads",
    "choose_thread_policy",
    "configure_threads",
    "describe_threads",
]

WAIT_POLICY = "OMP_WAIT_POLICY"
NUM_THREADS = "OMP_NUM_THREADS"
# Set next to OMP_WAIT_POLICY when this module chose it: a child process (torchrun's
# workers, a subprocess) inherits both and chooses again instead of taking the parent's
# choice for the user's.
CHOSEN = "TORCHREC_PLE_CHOSEN_OMP_WAIT_POLICY"


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread settings of one process and why they were chosen.

    Args:
        wait_policy (str): ``OMP_WAIT_POLICY`` in effect: ``ACTIVE`` or ``PASSIVE`` (or the
            user's own value).
        threads (int): OpenMP threads per process assumed for the decision.
        processes (int): processes on this node (``LOCAL_WORLD_SIZE``).
        cores (int): CPUs this process may run on.
        busy (int): threads of other programs running when the policy was chosen.
        reason (str): why, in words.
        user_set (bool): the policy came from the environment, not from this module.
    """

    wait_policy: str
    threads: int
    processes: int
    cores: int
    busy: int
    reason: str
    user_set: bool = False

    @property
    def oversubscribed(self) -> bool:
        """Whether the node's OpenMP threads, with the other busy threads, outnumber its cores."""
        return self.processes * self.threads + self.busy > self.cores


def available_cores() -> int:
    """CPUs this process may run on (its affinity mask, else ``os.cpu_count``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def busy_threads(processes: int = 1, samples: int = 5, interval_s: float = 0.001) -> int:
    """Threads of other programs running right now (Linux; 0 where unknown).

    The median over a few samples of the runnable count in ``/proc/loadavg``, less this
    node's ``processes`` (those starting with this one, this one included). A snapshot,
    not the load average: that one still counts a run that just ended.

    Args:
        processes (int): processes of this job on the node. Default: 1.
        samples (int): readings. Default: 5.
        interval_s (float): seconds between readings. Default: 0.001.
    """
    counts = []
    for i in range(samples):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, IndexError, ValueError):
            return 0
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, sorted(counts)[len(counts) // 2] - processes)


def _positive_int(text: Optional[str]) -> Optional[int]:
    # OMP_NUM_THREADS may be a comma list (one value per nesting level): the first counts.
    try:
        value = int((text or "").split(",")[0])
    except ValueError:
        return None
    return value if value > 0 else None


def choose_thread_policy(
    env: Mapping[str, str], cores: int, num_threads: Optional[int] = None, busy: int = 0
) -> ThreadPolicy:
    """The wait policy for ``env`` on ``cores`` CPUs (a pure decision; nothing is set).

    Threads spin (``ACTIVE``) when ``processes x threads + busy <= cores``, else sleep
    (``PASSIVE``); a policy set in ``env`` wins.

    Args:
        env (Mapping[str, str]): the environment as the user set it (``OMP_WAIT_POLICY``,
            ``OMP_NUM_THREADS``, ``LOCAL_WORLD_SIZE``).
        cores (int): CPUs available to each process.
        num_threads (Optional[int]): threads per process when known (e.g.
            ``train.num_threads``); else ``OMP_NUM_THREADS``, else torch's default (one per
            core). Default: None.
        busy (int): threads of other programs running on the node. Default: 0.

    Returns:
        ThreadPolicy: the decision.
    """
    processes = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    threads = num_threads or _positive_int(env.get(NUM_THREADS)) or cores
    user = env.get(WAIT_POLICY)
    if user:
        reason = "set in the environment"
        return ThreadPolicy(user.upper(), threads, processes, cores, busy, reason, True)
    count = f"{processes} process{'es' if processes > 1 else ''} x {threads} threads"
    if busy:
        count += f" + {busy} busy elsewhere"
    if processes * threads + busy > cores:
        reason = f"{count} > {cores} cores: waiting threads sleep and leave the cores to others"
        return ThreadPolicy("PASSIVE", threads, processes, cores, busy, reason)
    reason = f"{count} <= {cores} cores: waiting threads spin, no wake-up per parallel region"
    return ThreadPolicy("ACTIVE", threads, processes, cores, busy, reason)


# The user's own OMP_WAIT_POLICY, read once before this module sets it, so that a second
# call (the CLI after the package import) can still tell the user's value from its own.
_USER_POLICY: Optional[str] = None
_SNAPSHOT_TAKEN = False
_POLICY: Optional[ThreadPolicy] = None


def configure_threads(
    environ: Optional[MutableMapping[str, str]] = None, default_threads: bool = False
) -> Optional[ThreadPolicy]:
    """Choose and set ``OMP_WAIT_POLICY`` (and, if asked, ``OMP_NUM_THREADS``).

    Does nothing once torch is imported: libgomp has read its settings by then.

    Args:
        environ (Optional[MutableMapping[str, str]]): the environment to read and set.
            Default: ``os.environ``.
        default_threads (bool): with several processes on the node and no
            ``OMP_NUM_THREADS``, give each process ``cores // processes`` threads (the
            CLI does; a library import leaves thread counts alone). Default: False.

    Returns:
        Optional[ThreadPolicy]: the decision, or None if torch was already imported.
    """
    global _USER_POLICY, _SNAPSHOT_TAKEN, _POLICY
    env = os.environ if environ is None else environ
    if "torch" in sys.modules:
        return None
    if not _SNAPSHOT_TAKEN:
        inherited = env.get(WAIT_POLICY)
        _USER_POLICY = None if inherited and inherited == env.get(CHOSEN) else inherited
        _SNAPSHOT_TAKEN = True
    cores = available_cores()
    processes = _positive_int(env.get("LOCAL_WORLD_SIZE")) or 1
    if default_threads and processes > 1 and NUM_THREADS not in env:
        env[NUM_THREADS] = str(max(1, cores // processes))
    user_env = dict(env)
    user_env.pop(WAIT_POLICY, None)
    if _USER_POLICY:
        user_env[WAIT_POLICY] = _USER_POLICY
    busy = 0 if _USER_POLICY else busy_threads(processes)
    _POLICY = choose_thread_policy(user_env, cores, busy=busy)
    env[WAIT_POLICY] = _POLICY.wait_policy
    if _POLICY.user_set:
        env.pop(CHOSEN, None)
    else:
        env[CHOSEN] = _POLICY.wait_policy
    return _POLICY


def describe_threads(num_threads: int) -> str:
    """One log line: the threads in use, the wait policy and why.

    Args:
        num_threads (int): intra-op threads of this process now (``torch.get_num_threads()``).
    """
    policy = _POLICY
    if policy is None:
        # torch was imported before this package: libgomp kept what the environment said.
        value = os.environ.get(WAIT_POLICY) or "unset (libgomp default)"
        return (
            f"threads: {num_threads} per process; OMP_WAIT_POLICY={value} "
            "(torch was imported before torchrec_ple, so it was not chosen here)"
        )
    line = (
        f"threads: {num_threads} per process, {policy.processes} on this node, "
        f"{policy.cores} cores; OMP_WAIT_POLICY={policy.wait_policy} ({policy.reason})"
    )
    if policy.user_set:
        return line
    now = choose_thread_policy(
        {"LOCAL_WORLD_SIZE": str(policy.processes)}, policy.cores, num_threads, policy.busy
    )
    if now.wait_policy != policy.wait_policy:
        # e.g. train.num_threads raised the count after libgomp had read the policy.
        line += f"; with {num_threads} threads, run with OMP_WAIT_POLICY={now.wait_policy}"
    return line
