"""Run a plan on SLURM through submitit: one job per training step, one job array per model's
evaluations, ``afterok`` dependencies between them, retries by requeueing, and the job ids in the
run store so that a second submission, ``ablate status`` and ``ablate cancel`` find them.

What a submission does, in order:

1. checks before anything is queued: the profile, ``sbatch`` on the PATH, the GPUs a class of job
   asks per node against what the partition's nodes have, and ``sbatch --test-only`` for each class
   of job (an unknown partition, account or qos is refused there, with sbatch's own words);
2. leaves alone every step that is done, or whose recorded job is still queued or running;
3. submits the rest in dependency order: each training step alone (torchrun over its nodes when
   it has more than one process), then the evaluations that read the same models as one array;
   a job depends (``afterok``) on the jobs of its inputs that are not done, and is cancelled by
   SLURM if one of them fails for good (``--kill-on-invalid-dep``).

A failing step requeues its own job (same id, so dependents keep waiting) until it has failed
``max_attempts`` times; one warned of its time limit or of a preemption saves a checkpoint, is
requeued and resumes from it. What runs inside the jobs is ``ablate.launch.slurm_job``.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from ablate.launch.default_profile import SINFO_SOURCE, ResolvedProfile, gpus_in_gres
from ablate.launch.profile import LoadedProfile, Resources, resource_class
from ablate.launch.slurm_job import (  # noqa: F401  (SlurmStepJob: the jobs' class, from here too)
    CONFIG_FILE, RENDEZVOUS_FILE, SlurmStepJob, TorchrunStepJob, torchrun_command,
)
from ablate.spec.load import SpecError
from ablate.spec.plan import Plan, Step
from ablate.spec.steps import step_kind
from ablate.store import RunStore, StepBusy
from ablate.store.store import blocked_state

# squeue states of a job that will still run (or is running): never submit its step again.
LIVE_STATES = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED",
                         "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "SIGNALING",
                         "STAGE_OUT"})
FAILED_STATES = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
                           "BOOT_FAIL", "DEADLINE", "PREEMPTED"})
TRACKED = ("submitted", "running", "retrying", "queued")  # store states that have a live job


class SlurmError(RuntimeError):
    """A submission that cannot go ahead, with a message meant for the user."""


# ---------------------------------------------------------------- talking to SLURM


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def require_slurm() -> None:
    missing = [tool for tool in ("sbatch", "squeue", "scancel", "srun") if shutil.which(tool) is None]
    if missing:
        raise SlurmError(f"no {', '.join(f'`{t}`' for t in missing)} on the PATH: --submit needs "
                         "a SLURM client (on a login node of the cluster), or start the local one "
                         "with slurm/start-local-cluster.sh and `. /tmp/ablate-slurm/env.sh`")


def slurm_states(job_ids: Iterable[str]) -> dict[str, dict]:
    """``{job id: {"state", "reason", "source"}}`` for the jobs SLURM still knows.

    squeue first (pending and running jobs, array tasks one by one); jobs it no longer lists are
    asked from sacct, which is absent where accounting is off (then they are simply missing, and
    the run store says how they ended)."""
    wanted = {str(j) for j in job_ids if j}
    if not wanted:
        return {}
    found: dict[str, dict] = {}
    # --states=all: a job that just failed or was cancelled stays listed for a while (MinJobAge)
    # where there is no sacct to ask, instead of looking lost
    out = _run(["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r"])
    if out.returncode != 0:
        raise SlurmError(f"squeue failed: {out.stderr.strip() or out.stdout.strip()}")
    for line in out.stdout.splitlines():
        job_id, _, rest = line.strip().partition("|")
        state, _, reason = rest.partition("|")
        if job_id in wanted:
            found[job_id] = {"state": state, "reason": reason, "source": "squeue"}
    rest = sorted(wanted - set(found))
    if rest and shutil.which("sacct"):
        out = _run(["sacct", "--noheader", "--parsable2", "--allocations",
                    "--format=JobID,State,ExitCode", "--jobs", ",".join(rest)])
        if out.returncode == 0:  # "Slurm accounting storage is disabled" otherwise
            for line in out.stdout.splitlines():
                job_id, state, exit_code = (line.split("|") + ["", ""])[:3]
                if job_id in wanted and job_id not in found:
                    found[job_id] = {"state": state.split()[0] if state else "UNKNOWN",
                                     "reason": f"exit code {exit_code}", "source": "sacct"}
    return found


def partition_node_gpus(partition: str | None) -> int | None:
    """The most GPUs one node of the partition has, from sinfo; None when sinfo cannot say."""
    if shutil.which("sinfo") is None:
        return None
    cmd = ["sinfo", "--noheader", "--format=%G"] + ([f"--partition={partition}"] if partition else [])
    out = _run(cmd)
    if out.returncode != 0 or not out.stdout.strip():
        return None
    return max(gpus_in_gres(line) for line in out.stdout.splitlines())


# ---------------------------------------------------------------- sbatch parameters


def sbatch_parameters(profile: LoadedProfile, klass: str, job_name: str,
                      dependency: list[str] = (), res: Resources | None = None) -> dict:
    """submitit SlurmExecutor parameters for one job of a resource class (``res``: the step's
    own resources, by kind and model size; default: its class's)."""
    cfg, res = profile.config, res or profile.config.resources(klass)
    params = {
        "job_name": job_name, "partition": cfg.partition_for(klass), "account": cfg.account,
        "qos": res.qos or cfg.qos, "constraint": res.constraint or cfg.constraint,
        "time": res.time_min, "nodes": res.nodes, "ntasks_per_node": 1,
        "cpus_per_task": res.cpus_per_task, "gpus_per_node": res.gpus_per_node or None,
        "mem": f"{int(res.mem_gb * 1024)}M", "signal_delay_s": cfg.signal_delay_s,
        "setup": [*cfg.setup, *cfg.environment.export_lines()] or None,
        "array_parallelism": cfg.array_parallelism,
        "dependency": "afterok:" + ":".join(dependency) if dependency else None,
        # srun does not take the job's --cpus-per-task from sbatch (SLURM >= 22.05)
        "srun_args": [f"--cpus-per-task={res.cpus_per_task}",
                      *([f"--cpu-bind={cfg.environment.cpu_bind}"] if cfg.environment.cpu_bind
                        else [])],
        # Requeueable (failed attempts and preemptions come back with the same id), and cancelled
        # by SLURM when an input's job failed for good instead of pending forever.
        "additional_parameters": {"requeue": True, "kill_on_invalid_dep": "yes",
                                  **cfg.sbatch, **res.sbatch},
    }
    return {k: v for k, v in params.items() if v is not None}


def _test_only_flags(params: dict) -> list[str]:
    flags = []
    for key in ("partition", "account", "qos", "constraint", "time", "nodes", "ntasks_per_node",
                "cpus_per_task", "gpus_per_node", "mem"):
        if key in params:
            flags.append(f"--{key.replace('_', '-')}={params[key]}")
    for key, value in params.get("additional_parameters", {}).items():
        if key in ("requeue", "kill_on_invalid_dep"):
            continue
        flags.append(f"--{key.replace('_', '-')}" if value is True
                     else f"--{key.replace('_', '-')}={value}")
    return flags


def preflight(plan: Plan, steps: list[Step], profile: LoadedProfile, dry_run: bool) -> None:
    """Every check that can fail before a job is queued."""
    cfg = profile.config
    classes = sorted({resource_class(s) for s in steps})
    for klass in classes:
        res = cfg.resources(klass)
        if klass == "train" and res.world_size > 1:
            odd = sorted({s.kind for s in steps if resource_class(s) == "train"
                          and step_kind(s.kind).recipe is None})
            if odd:
                raise SlurmError(f"cluster profile {profile.path}: train asks for {res.world_size} "
                                 f"processes, but {', '.join(odd)} steps train in one process; "
                                 "use a profile with train.nodes: 1 and train.procs_per_node: 1")
        have = cfg.node_gpus if cfg.node_gpus is not None else (
            None if dry_run else partition_node_gpus(cfg.partition_for(klass)))
        if have is not None and res.gpus_per_node > have:
            where = "node_gpus in the profile" if cfg.node_gpus is not None else "sinfo's GRES"
            raise SlurmError(
                f"cluster profile {profile.path}: the grid's {klass} jobs ask for "
                f"{res.gpus_per_node} GPUs per node ({klass}.gpus_per_node), but a node of partition "
                f"{cfg.partition_for(klass) or '(default)'} has {have} ({where}); lower "
                f"{klass}.gpus_per_node or raise {klass}.nodes")
    if dry_run:
        return
    require_slurm()
    for klass in classes:
        params = sbatch_parameters(profile, klass, f"ablate-check-{klass}")
        out = _run(["sbatch", "--test-only", *_test_only_flags(params), "--wrap", "true"])
        if out.returncode != 0:
            message = (out.stderr or out.stdout).strip().replace("sbatch: error: ", "")
            raise SlurmError(f"cluster profile {profile.path} ({profile.name}): sbatch refused "
                             f"its {klass} jobs (partition "
                             f"{cfg.partition_for(klass) or '(default)'}): {message}")


# ---------------------------------------------------------------- submitting a plan


@dataclass
class JobGroup:
    """One sbatch submission: a single step, or an array of evaluations with the same inputs."""

    klass: str
    steps: list[Step] = field(default_factory=list)
    resources: Resources | None = None  # None: the class's


def group_steps(steps: list[Step], resources_of=None) -> list[JobGroup]:
    """Training steps one job each (in dependency order); evaluations of the same inputs with the
    same resources as one array (``resources_of(step)``: a step's own resources)."""
    groups: list[JobGroup] = []
    arrays: dict[tuple, JobGroup] = {}
    for step in steps:
        klass = resource_class(step)
        res = resources_of(step) if resources_of else None
        if klass == "train":
            groups.append(JobGroup(klass, [step], res))
            continue
        key = (klass, tuple(sorted(step.inputs.values())),
               res.model_dump_json() if res else None)
        if key not in arrays:
            arrays[key] = JobGroup(klass, [], res)
            groups.append(arrays[key])
        arrays[key].steps.append(step)
    train = [g for g in groups if g.klass == "train"]
    return train + [g for g in groups if g.klass != "train"]


def _job_for(step: Step, plan_id: str, store: RunStore,
             profile: LoadedProfile, res: Resources | None = None) -> SlurmStepJob:
    cfg = profile.config
    res = res or cfg.resources(resource_class(step))
    common = dict(store_root=str(store.root), plan_id=plan_id, step_id=step.id,
                  max_attempts=cfg.max_attempts)
    if resource_class(step) == "train" and res.world_size > 1:
        return TorchrunStepJob(**common, procs_per_node=res.processes_per_node,
                               threads_per_process=threads_per_process(profile),
                               rendezvous_timeout_s=cfg.rendezvous_timeout_s)
    return SlurmStepJob(**common)


def threads_per_process(profile: LoadedProfile) -> int:
    """CPU threads of each training process on a node: the profile's OMP_NUM_THREADS, else the
    task's CPUs shared among the node's processes (torch would start one per core of the node)."""
    env, res = profile.config.environment.env, profile.config.train
    if env.get("OMP_NUM_THREADS", "").isdigit():
        return int(env["OMP_NUM_THREADS"])
    return max(1, res.cpus_per_task // res.processes_per_node)


def submit_plan(plan: Plan, store: RunStore, profile: LoadedProfile, dry_run: bool = False,
                force: Iterable[str] = (), source: str | None = None) -> list[dict]:
    """Submit every step of ``plan`` that is not done and not already queued; one row per step
    (``step``, ``name``, ``kind``, ``resources``, ``job_id``, ``action``, ``after``), and with
    ``dry_run`` the sbatch script of each job (``sbatch``) instead of submitting."""
    from ablate.launch.local import select_steps

    forced = select_steps(plan, force)
    ordered = plan.order()
    todo = [s for s in ordered if s.id in forced or not store.is_done(s)]
    todo_ids = {s.id for s in todo}
    preflight(plan, todo, profile, dry_run)
    plan_id = None  # the snapshot the jobs read; a dry run saves none
    if not dry_run:
        if forced:
            cancel_steps([plan.steps[sid] for sid in forced], store)
            for sid in forced:
                store.reset(plan.steps[sid])
        plan_id = store.save_plan(plan, source=source)

    recorded = {s.id: store.state(s).get("slurm_job_id") for s in todo if s.id not in forced}
    live = {} if dry_run else slurm_states(j for j in recorded.values() if j)
    job_of: dict[str, str] = {}
    rows: list[dict] = []
    for step in ordered:
        if step.id not in todo_ids:
            rows.append(_row(step, "done", store.state(step).get("slurm_job_id") or "-", []))
            continue
        job_id = recorded.get(step.id)
        seen = live.get(str(job_id)) if job_id else None
        if seen and seen["state"] in LIVE_STATES:
            job_of[step.id] = job_id
            rows.append(_row(step, f"already {seen['state'].lower()}", job_id,
                             store.state(step).get("after") or []))
    to_submit = [s for s in todo if s.id not in job_of]

    folder = Path(profile.config.log_dir or store.root / "slurm") / "%j"
    from ablate.launch.planner import step_resources
    from ablate.models import cache_root

    for n, group in enumerate(group_steps(
            to_submit, lambda s: step_resources(profile.config, plan, s, cache_root()))):
        after = sorted({job_of[sid] for s in group.steps for sid in s.inputs.values()
                        if sid in job_of})
        # the first step's id tells the arrays of one grid apart in squeue
        name = f"ablate-{plan.grid}-{group.klass}-{group.steps[0].id[:8]}" + (
            f"-x{len(group.steps)}" if len(group.steps) > 1 else "")
        params = sbatch_parameters(profile, group.klass, name, after, group.resources)
        if dry_run:
            ids = [f"new{n}" + (f"_{i}" if len(group.steps) > 1 else "")
                   for i in range(len(group.steps))]
            script = _dry_run_script(folder, params, len(group.steps))
            if group.klass == "train":
                script += _torchrun_lines(group.steps[0], store, plan, profile)
            for step, job_id in zip(group.steps, ids):
                job_of[step.id] = job_id
                rows.append(_row(step, "would submit", job_id, after, group.klass, script))
            continue
        jobs = _submit_group(group, params, folder, store, profile, plan_id)
        for step, job in zip(group.steps, jobs):
            job_of[step.id] = job.job_id
            store.set_state(step, "submitted", slurm_job_id=job.job_id, submitted=time.time(),
                            cluster=str(profile.path), failures=0, error=None, log_tail=None,
                            slurm_log=str(job.paths.stdout), slurm_err=str(job.paths.stderr),
                            after=after)
            rows.append(_row(step, "submitted", job.job_id, after, group.klass))
    order = {s.id: i for i, s in enumerate(ordered)}
    return sorted(rows, key=lambda r: order[r["step"]])


def _row(step: Step, action: str, job_id: str, after: list[str], klass: str | None = None,
         sbatch: str | None = None) -> dict:
    row = {"step": step.id, "name": step.name, "kind": step.kind,
           "resources": klass or resource_class(step), "job_id": job_id, "action": action,
           "after": list(after)}
    if sbatch is not None:
        row["sbatch"] = sbatch
    return row


def _submit_group(group: JobGroup, params: dict, folder: Path, store: RunStore,
                  profile: LoadedProfile, plan_id: str) -> list:
    import submitit

    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=profile.config.max_requeues)
    executor.update_parameters(**params)
    callables = [_job_for(step, plan_id, store, profile, group.resources) for step in group.steps]
    try:
        if len(callables) == 1:
            return [executor.submit(callables[0])]
        with executor.batch():
            futures = [executor.submit(c) for c in callables]
        return futures
    except Exception as exc:  # submitit wraps sbatch's refusal in several exception types
        raise SlurmError(f"cluster profile {profile.path} ({profile.name}): sbatch refused the "
                         f"{group.klass} job for {group.steps[0].name!r}: {exc}") from None


def _torchrun_lines(step: Step, store: RunStore, plan: Plan, profile: LoadedProfile) -> str:
    """What each node's task starts in a multi-process training job (as shell comments)."""
    job = _job_for(step, "PLAN", store, profile)
    if not isinstance(job, TorchrunStepJob):
        return ""
    res = profile.config.train
    folder = store.step_dir(step)
    inputs = {role: store.step_dir(plan.steps[sid]) for role, sid in step.inputs.items()}
    lines = [f"# each node's task (of {res.nodes}) then starts, with OMP_NUM_THREADS="
             f"{job.threads_per_process} (the first node's address and port from "
             f"{folder / RENDEZVOUS_FILE}):"]
    for node in range(res.nodes):
        cmd = torchrun_command(step_kind(step.kind).recipe, res.nodes, node, job.procs_per_node,
                               "$MASTER_ADDR", "$MASTER_PORT", folder / CONFIG_FILE, folder,
                               store.cache_dir, inputs)
        lines.append("# " + " ".join(shlex.quote(c) if not c.startswith("--master") else c
                                     for c in cmd))
    return "\n" + "\n".join(lines) + "\n"


def _dry_run_script(folder: Path, params: dict, n_steps: int) -> str:
    from submitit.slurm.slurm import _make_sbatch_string

    command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit",
                        shlex.quote(str(folder))])
    extra = {"map_count": n_steps} if n_steps > 1 else {}
    return _make_sbatch_string(command=command, folder=folder, **params, **extra)


# ---------------------------------------------------------------- tracking, cancelling, logs


def refresh_states(plan: Plan, store: RunStore, states: dict[str, dict]) -> dict[str, dict]:
    """The store's states, corrected by what SLURM says of the recorded jobs: ``queued`` (with
    squeue's reason), ``running``, ``blocked`` (an input failed), ``failed`` (SLURM ended it), or
    ``lost`` (gone from the queue without finishing: killed, cancelled, out of memory)."""
    tracked = {sid: st["slurm_job_id"] for sid, st in states.items()
               if st.get("state") in TRACKED and st.get("slurm_job_id")}
    if not tracked or shutil.which("squeue") is None:
        return states
    try:
        seen = slurm_states(tracked.values())
    except (SlurmError, OSError, subprocess.SubprocessError):
        return states
    out = dict(states)
    for sid in [s.id for s in plan.order() if s.id in tracked]:  # inputs before their users
        job_id = tracked[sid]
        now = store.state(plan.steps[sid])  # the job may have finished since states was read
        if now.get("state") not in TRACKED:
            out[sid] = now
            continue
        info = seen.get(str(job_id))
        log = now.get("slurm_log") or now.get("log")
        blocked = blocked_state(plan, out, sid)
        if blocked and (info is None or info["state"] in FAILED_STATES
                        or "DependencyNeverSatisfied" in info["reason"]):
            # SLURM cancelled it (--kill-on-invalid-dep) or holds it for good
            out[sid] = {**now, **blocked, "slurm_log": log}
        elif info is None or info["state"] in FAILED_STATES or info["state"] == "COMPLETED":
            out[sid] = {**now, **_job_ended(now, job_id, info), "log": log}
        elif now.get("state") == "retrying" and info["state"] != "RUNNING":
            # requeued after a failed attempt: the attempt's error is why it runs again
            out[sid] = {**now, "state": "retrying", "reason": info["reason"], "log": log,
                        "error": f"{now.get('retry', 'another attempt')} queued after: "
                                 f"{now.get('error') or '(no error recorded)'}"}
        elif info["state"] == "PENDING":
            blocked = "DependencyNeverSatisfied" in info["reason"]
            out[sid] = {**now, "state": "blocked" if blocked else "queued",
                        "reason": info["reason"], "log": log}
            if blocked:
                out[sid]["error"] = f"SLURM holds job {job_id} for good ({info['reason']})"
        else:
            out[sid] = {**now, "state": info["state"].lower(), "log": log}
    return out


def _job_ended(now: dict, job_id: str, info: dict | None) -> dict:
    """The state and error of a step whose job ended, or is gone from the queue, without a
    result: failed where SLURM says the job failed, else lost."""
    state = "failed" if info is not None and info["state"] in FAILED_STATES else "lost"
    if now.get("state") in ("queued", "retrying"):
        # the step asked for its job to be requeued, and SLURM ended the job instead (the time
        # limit came before the requeue, or the requeued run died before starting)
        asked = now.get("reason") if now["state"] == "queued" else now.get("error")
        ended = "is gone from the queue" if info is None else f"ended {info['state']}"
        return {"state": state, "error": f"SLURM job {job_id} {ended} after the step asked for "
                f"it to be requeued ({asked or 'no reason recorded'}); submit again to run it "
                "(a training step resumes from its last checkpoint)"}
    if info is None:
        error = (f"SLURM job {job_id} is gone from the queue and the step did not finish "
                 "(cancelled, killed or out of memory?)")
    elif state == "failed":
        error = f"SLURM job {job_id}: {info['state']} ({info['reason']})"
    else:  # the job ended well but the step has no result
        error = f"SLURM job {job_id} completed but the step recorded no result"
    return {"state": state, "error": now.get("error") or error}


def cancel_steps(steps: Iterable[Step], store: RunStore) -> list[str]:
    steps = [s for s in steps if not store.is_done(s)]
    recorded = {s.id: store.state(s) for s in steps}
    ids = {sid: st.get("slurm_job_id") for sid, st in recorded.items()
           if st.get("state") in TRACKED and st.get("slurm_job_id")}
    if not ids:
        return []
    require_slurm()
    live = slurm_states(ids.values())
    cancel = sorted({j for j in ids.values() if live.get(str(j), {}).get("state") in LIVE_STATES})
    if cancel:
        out = _run(["scancel", *cancel])
        if out.returncode != 0:
            raise SlurmError(f"scancel {' '.join(cancel)} failed: {out.stderr.strip()}")
    for step in steps:
        if ids.get(step.id) in cancel:
            store.set_state(step, "cancelled", cancelled=time.time())
    return cancel


def cancel_plan(plan: Plan, store: RunStore) -> list[str]:
    """Cancel the queued and running jobs of a plan's steps; returns the cancelled job ids."""
    return cancel_steps(plan.steps.values(), store)


def find_step_by_job(store: RunStore, job: str) -> Path | None:
    """A step folder by the SLURM job id it ran as (``123`` or array task ``123_4``), else by its
    step id or a unique prefix of it."""
    exact, in_array = [], []
    for state_file in (store.root / "steps").glob("*/*/state.json"):
        try:
            recorded = str(json.loads(state_file.read_text()).get("slurm_job_id"))
        except (OSError, json.JSONDecodeError):
            continue
        if recorded == job:
            exact.append(state_file.parent)
        elif recorded.split("_")[0] == job:
            in_array.append(state_file.parent)
    if len(exact) == 1:
        return exact[0]
    if not exact and len(in_array) == 1:
        return in_array[0]
    if len(exact) + len(in_array) > 1:
        raise SlurmError(f"SLURM job {job} ran {len(exact) + len(in_array)} steps (an array): "
                         f"name one task, e.g. {job}_0, or a step id")
    return store.find_step_dir(job)


def job_log(store: RunStore, job: str) -> str:
    """The step's own log and its SLURM job's output, by step id (prefix) or SLURM job id."""
    folder = find_step_by_job(store, job)
    if folder is None:
        raise SlurmError(f"{store.root}: no step with id or SLURM job id {job!r} "
                         "(`ablate status FILE --steps` lists them)")
    state = {}
    if (folder / "state.json").is_file():
        state = json.loads((folder / "state.json").read_text())
    parts = []
    for title, path in (("step log", folder / "log.txt"),
                        ("SLURM job output", state.get("slurm_log")),
                        ("SLURM job errors", state.get("slurm_err"))):
        if path and Path(path).is_file() and Path(path).stat().st_size:
            parts.append(f"==> {title}: {path} <==\n{Path(path).read_text(errors='replace')}")
    if not parts:
        return f"(no log yet for {folder.name}: state {state.get('state', 'pending')})\n"
    return "\n".join(parts)


# ---------------------------------------------------------------- the CLI's entry point


def profile_yaml(config) -> str:
    """A profile as the YAML file that would give it (what was derived, shown to the user)."""
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False)


def submit_from_cli(plan: Plan, store: RunStore, resolved: ResolvedProfile, dry_run: bool = False,
                    force: Iterable[str] = (), console=None, source: str | None = None) -> list[dict]:
    """``ablate grid FILE --submit [--cluster PROFILE] [--dry-run] [--force …]`` on the profile
    ``ablate.launch.default_profile.resolve_profile`` found."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    try:
        profile = resolved.profile
        if resolved.source != "--cluster":
            console.print(f"cluster profile: {profile.path} ({resolved.source})", highlight=False)
            if profile.path == SINFO_SOURCE:
                console.print(profile_yaml(profile.config), markup=False, highlight=False)
        rows = submit_plan(plan, store, profile, dry_run=dry_run, force=force, source=source)
    except (SlurmError, SpecError, ValueError, StepBusy) as exc:
        console.print(f"[red]error:[/] {exc}", highlight=False)
        raise SystemExit(2)
    if dry_run:
        shown = set()
        for row in rows:
            if "sbatch" in row and row["job_id"].split("_")[0] not in shown:
                shown.add(row["job_id"].split("_")[0])
                console.print(f"[bold]# job {row['job_id'].split('_')[0]} "
                              f"({row['resources']})[/]", highlight=False)
                console.print(row["sbatch"], markup=False, highlight=False, soft_wrap=True)
    table = Table(title=f"grid {plan.grid} on {profile.name}"
                  + (" (dry run: nothing submitted)" if dry_run else ""))
    for column in ("job", "resources", "step", "action", "after"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["job_id"], row["resources"], row["name"], row["action"],
                      ",".join(row["after"]) or "-")
    console.print(table)
    submitted = sum(r["action"] == "submitted" for r in rows)
    if not dry_run:
        console.print(f"submitted {submitted} step(s); `ablate status {source or 'FILE'}` follows "
                      "them, `ablate cancel` stops them")
    return rows
