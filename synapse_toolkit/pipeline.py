"""Plan and run a pipeline: validate every stage against its plugin, order by dependencies,
run each stage once, store its artifacts atomically, record a manifest, resume on request.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synapse_toolkit import __version__, artifact_types
from synapse_toolkit.artifacts import ArtifactStore, atomic_replace_dir
from synapse_toolkit.config import PipelineConfig, format_validation_error
from synapse_toolkit.errors import ConfigError, DataError, PluginError, SyntkError
from synapse_toolkit.fsio import (
    LOCK_NAME,
    RunLock,
    atomic_write_text,
    dumps,
    read_run_manifest,
    remove_stale_temporaries,
    sha256_file,
)
from synapse_toolkit.memory import (
    children_peak_rss_mb,
    limit_malloc_arenas,
    peak_rss_mb,
    release_free_memory,
    reset_peak,
)
from synapse_toolkit.plugin_manager import PluginSet, get_plugins
from synapse_toolkit.stage_registry import RegisteredStage
from synapse_toolkit.stages import (
    Loader,
    Placement,
    Port,
    ProgressFactory,
    Stage,
    StageContext,
    StageOptions,
    check_grids,
)

MANIFEST = "manifest.json"
#: what `syntk report` writes into a run directory
REPORT_FILES = ("report.html", "report")


@dataclass
class PlannedStage:
    """A validated stage instance, ready to run."""

    name: str
    registered: RegisteredStage
    options: StageOptions
    inputs: dict[str, tuple[str, str]]  # port -> (producer stage, producer port)
    skip_if_missing: bool = False

    @property
    def cls(self) -> type[Stage]:
        return self.registered.cls


@dataclass
class Plan:
    config: PipelineConfig
    stages: list[PlannedStage]
    input_path: Path

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "stage": s.name,
                "kind": s.cls.kind,
                "plugin": s.cls.name,
                "inputs": {p: f"{a}.{b}" for p, (a, b) in s.inputs.items()},
                "outputs": sorted(s.cls.outputs),
                "options": s.options.model_dump(mode="json"),
            }
            for s in self.stages
        ]


def wire_problem(out: Port, want: Port) -> str | None:
    """Why an output port cannot feed an input port (types, channel counts), or None."""
    if not artifact_types.compatible(out.type, want.type):
        return f"carries {out.describe()}"
    have = out.channels
    if have is not None and want.channels is not None and have != want.channels:
        return f"carries {out.describe()}"
    low = want.min_channels or want.artifact.min_channels
    if have is not None and low is not None and have < low:
        return f"carries {out.describe()}"
    return None


def resolve_input(config: PipelineConfig, *, download: bool = True) -> Path:
    """The input file of the run; a registry dataset is resolved (fetched if ``download``)."""
    if config.input.path is not None:
        path = config.input.path
        if not path.exists():
            raise ConfigError(f"input.path: file not found: {path}")
        return path
    from synapse_toolkit.datasets import resolve_dataset  # local: registry is optional at import

    try:
        return resolve_dataset(str(config.input.dataset), download=download)
    except SyntkError as exc:
        raise ConfigError(f"input.dataset: {exc}") from None


def plan_pipeline(
    config: PipelineConfig,
    plugins: PluginSet | None = None,
    *,
    check_input: bool = True,
    download: bool = True,
) -> Plan:
    """Validate a config against the installed plugins and order its stages.

    Raises ConfigError naming the key path (unknown plugin, bad option, unwired input, cycle).
    With ``download=False`` (validate, dry run) a registry dataset is never fetched.
    """
    plugins = plugins or get_plugins()
    registry = plugins.stages
    enabled = {n: s for n, s in config.stages.items() if s.enabled}
    planned: dict[str, PlannedStage] = {}
    for name, sc in enabled.items():
        key = f"stages.{name}"
        if sc.kind not in registry.kinds():
            raise ConfigError(f"{key}.kind: unknown stage kind {sc.kind!r} "
                              f"(known: {', '.join(registry.kinds())})")  # fmt: skip
        try:
            registered = registry.get(sc.kind, sc.plugin)
        except PluginError as exc:
            broken = [s for s in plugins.statuses if s.status == "failed"]
            hint = f"; broken plugins: {', '.join(s.name for s in broken)}" if broken else ""
            raise ConfigError(f"{key}.plugin: {exc}{hint}") from None
        try:
            parsed: StageOptions = registered.cls.Options.model_validate(sc.options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"{key}.options")) from None
        options = _resolve_file_options(config, key, parsed)
        wires: dict[str, tuple[str, str]] = {}
        for port, ref in sc.inputs.items():
            if port not in registered.cls.inputs:
                raise ConfigError(
                    f"{key}.inputs.{port}: {sc.plugin} has no input {port!r} "
                    f"(inputs: {', '.join(registered.cls.inputs) or 'none'})"
                )
            src_stage, src_port = ref.split(".")
            wires[port] = (src_stage, src_port)
        for port, spec in registered.cls.inputs.items():
            if spec.required and port not in wires:
                raise ConfigError(f"{key}.inputs.{port}: required input is not wired "
                                  f"(give '<stage>.<port>')")  # fmt: skip
        planned[name] = PlannedStage(
            name, registered, options, wires, skip_if_missing=sc.on_missing_input == "skip"
        )

    for name, ps in planned.items():
        for port, (src_stage, src_port) in ps.inputs.items():
            key = f"stages.{name}.inputs.{port}"
            producer = planned.get(src_stage)
            if producer is None:
                what = "is disabled" if src_stage in config.stages else "does not exist"
                raise ConfigError(f"{key}: artifact '{src_stage}.{src_port}' is produced by no "
                                  f"stage (stage {src_stage!r} {what})")  # fmt: skip
            out = producer.cls.outputs.get(src_port)
            if out is None:
                raise ConfigError(
                    f"{key}: stage {src_stage!r} ({producer.cls.name}) has no output "
                    f"{src_port!r} (outputs: {', '.join(producer.cls.outputs)})"
                )
            want = ps.cls.inputs[port]
            problem = wire_problem(out, want)
            if problem:
                raise ConfigError(f"{key}: '{src_stage}.{src_port}' ({producer.cls.name}) "
                                  f"{problem}, but {ps.cls.name} input {port!r} takes "
                                  f"{want.describe()}")  # fmt: skip

    order = _topological(planned)
    input_path = resolve_input(config, download=download) if check_input else Path()
    plan = Plan(config, [planned[n] for n in order], input_path)
    if check_input and input_path.exists():
        _check_static_grids(plan)
    return plan


def _check_static_grids(plan: Plan) -> None:
    """Reject, before compute, loader volumes on different grids wired into one stage's
    same-grid ports (placements read from metadata by :meth:`Loader.probe`)."""
    by_name = {ps.name: ps for ps in plan.stages}
    probes: dict[str, Mapping[str, Placement]] = {}
    for ps in plan.stages:
        seen: dict[str, tuple[str, Placement]] = {}
        for port, (src, src_port) in ps.inputs.items():
            spec = ps.cls.inputs[port]
            producer = by_name[src]
            if not spec.grid or not issubclass(producer.cls, Loader):
                continue
            if src not in probes:
                try:
                    probes[src] = producer.cls.probe(producer.options, plan.input_path)
                except (SyntkError, OSError, KeyError, ValueError):
                    probes[src] = {}  # the loader reports unreadable data when it runs
            place = probes[src].get(src_port)
            if place is None:
                continue
            wire = f"{src}.{src_port}"
            if spec.grid in seen:
                other_wire, other = seen[spec.grid]
                diff = other.difference(place)
                if diff:
                    key = f"stages.{ps.name}.inputs.{port}"
                    raise ConfigError(f"{key}: '{wire}' and '{other_wire}' lie on different "
                                      f"grids ({diff})")  # fmt: skip
            else:
                seen[spec.grid] = (wire, place)


def _resolve_file_options(config: PipelineConfig, key: str, options: StageOptions) -> StageOptions:
    """Options that name files, made absolute by the path rule and checked to exist."""
    updates = {}
    for name, value in options:
        if isinstance(value, Path):
            path = config.resolve_path(f"{key}.options.{name}", value)
            if not path.exists():
                raise ConfigError(f"{key}.options.{name}: file not found: {path}")
            updates[name] = path
    return options.model_copy(update=updates) if updates else options


def _topological(planned: dict[str, PlannedStage]) -> list[str]:
    """Dependency order; ties keep file order."""
    remaining = list(planned)
    done: list[str] = []
    while remaining:
        for name in remaining:
            deps = {s for s, _ in planned[name].inputs.values()}
            if deps <= set(done):
                done.append(name)
                remaining.remove(name)
                break
        else:
            raise ConfigError(f"stages: dependency cycle among {', '.join(remaining)}")
    return done


# -- running ------------------------------------------------------------------------------------
def _file_options(options: StageOptions) -> dict[str, str]:
    """sha256 of every option that names an existing file (models), so a changed file reruns."""
    out = {}
    for key, value in options:
        if isinstance(value, Path) and value.is_file():
            out[key] = sha256_file(value)
    return out


def _fingerprint(ps: PlannedStage, upstream: dict[str, str], input_hash: str) -> str:
    doc = {
        "kind": ps.cls.kind,
        "plugin": ps.cls.name,
        "plugin_version": ps.cls.version,
        "options": ps.options.model_dump(mode="json"),
        "inputs": {p: f"{upstream[s]}:{port}" for p, (s, port) in sorted(ps.inputs.items())},
        "input_file": input_hash if not ps.inputs else "",
        "files": _file_options(ps.options),
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped" (resumed) | "skipped: no <artifact>" (on_missing_input)
    seconds: float
    outputs: dict[str, dict[str, Any]]


@dataclass
class RunResult:
    run_dir: Path
    stages: list[StageResult] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    store: ArtifactStore | None = None

    def close(self) -> None:
        """Close files that lazily loaded artifacts read from."""
        if self.store is not None:
            self.store.close()

    def scores(self) -> dict[str, Any]:
        from synapse_toolkit.data import ScoreRecord

        return {k: v.to_dict() for k, v in self.artifacts.items() if isinstance(v, ScoreRecord)}


def _read_manifest(run_dir: Path) -> dict[str, Any]:
    """The manifest of an earlier run in ``run_dir`` ({} when there is none or it is not a syntk
    manifest: :func:`check_output_dir` has refused a folder holding anything else)."""
    try:
        manifest = read_run_manifest(run_dir)
    except (OSError, DataError):  # missing, unreadable, not JSON, not a run's
        return {}
    return manifest if "syntk_version" in manifest else {}


def _plugin_versions(plan: Plan, plugins: PluginSet) -> dict[str, str]:
    out = {}
    for ps in plan.stages:
        st = plugins.status(ps.registered.plugin)
        out[ps.registered.plugin] = st.version if st else ""
    return out


def run_pipeline(
    plan: Plan,
    *,
    resume: bool = False,
    plugins: PluginSet | None = None,
    progress_factory: ProgressFactory | None = None,
    on_stage: Callable[[str, str], None] | None = None,
) -> RunResult:
    """Run the planned stages in order; each stage's outputs are stored before the next starts.

    With ``resume``, a stage whose fingerprint (plugin, version, options, upstream fingerprints,
    input file hash) matches the manifest and whose artifacts exist is skipped.
    """
    plugins = plugins or get_plugins()
    cfg = plan.config
    run_dir = cfg.output.dir
    check_output_dir(plan)
    limit_malloc_arenas()
    lock = RunLock(run_dir).acquire()
    try:
        if lock.took_over and on_stage:
            on_stage("lock", f"took over the stale lock of pid {lock.took_over.get('pid', '?')}")
        return _run_locked(plan, resume=resume, plugins=plugins,
                           progress_factory=progress_factory, on_stage=on_stage)  # fmt: skip
    finally:
        lock.release()


def check_output_dir(plan: Plan) -> None:
    """Refuse an output directory that is a file, is the input, holds the input, or holds
    files of the user's (a non-empty folder that is not an earlier syntk run: a run replaces
    what an earlier run wrote, and nothing else)."""
    run_dir = plan.config.output.dir
    if run_dir.exists() and not run_dir.is_dir():
        raise DataError(f"output.dir: {run_dir} is a file, not a directory")
    if plan.input_path != Path() and (
        _is_within(plan.input_path, run_dir / "artifacts")
        or plan.input_path.resolve() == run_dir.resolve()
    ):
        raise DataError(f"output.dir: {run_dir} contains the input file {plan.input_path}; "
                        "choose another output directory")  # fmt: skip
    for ps in plan.stages:
        filename = getattr(ps.options, "filename", None)
        if (
            ps.cls.kind == "writer"
            and isinstance(filename, str)
            and plan.input_path != Path()
            and (run_dir / filename).resolve() == plan.input_path.resolve()
        ):
            raise DataError(f"stages.{ps.name}.options.filename: {run_dir / filename} is the "
                            "pipeline input; refusing to overwrite it")  # fmt: skip
    if run_dir.is_dir() and not _read_manifest(run_dir):
        theirs = sorted(p.name for p in run_dir.iterdir() if p.name != LOCK_NAME)
        if theirs:
            shown = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
            raise DataError(f"output.dir: {run_dir} holds files that are not a syntk run's "
                            f"({shown}); choose a new or empty output directory")  # fmt: skip


def _clear_previous_run(run_dir: Path, store: ArtifactStore, previous: dict[str, Any]) -> None:
    """Remove what an earlier run left (artifacts, the files its writers wrote), after the new
    manifest already marks the directory as an unfinished run."""
    for stage in previous.get("stages", {}).values():
        for rec in stage.get("outputs", {}).values():
            if rec.get("type") == "file":
                target = run_dir / rec["path"]
                if _is_within(target, run_dir) and target.is_dir():
                    shutil.rmtree(target)
                elif _is_within(target, run_dir) and target.exists():
                    target.unlink()
    for name in REPORT_FILES:  # a report describes the run that wrote it
        old = run_dir / name
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        elif old.exists():
            old.unlink()
    blockwise = run_dir / "blockwise"  # per-block work and done markers of blockwise stages
    if blockwise.is_dir():
        shutil.rmtree(blockwise, ignore_errors=True)
    if store.artifact_dir.exists():
        trash = run_dir / f".artifacts.old-{time.time_ns()}"
        atomic_replace_dir(store.artifact_dir, trash)
        shutil.rmtree(trash, ignore_errors=True)
    for old in run_dir.glob(".artifacts.old-*"):
        shutil.rmtree(old, ignore_errors=True)


def _run_locked(
    plan: Plan,
    *,
    resume: bool,
    plugins: PluginSet,
    progress_factory: ProgressFactory | None,
    on_stage: Callable[[str, str], None] | None,
) -> RunResult:
    cfg = plan.config
    run_dir = cfg.output.dir
    store = ArtifactStore(run_dir)
    store.clear_scratch()
    remove_stale_temporaries(run_dir)
    previous = _read_manifest(run_dir)
    old_stages = previous.get("stages", {}) if resume else {}
    input_hash = sha256_file(plan.input_path) if plan.input_path.is_file() else ""
    manifest: dict[str, Any] = {
        "syntk_version": __version__,
        "python": platform.python_version(),
        "status": "running",
        "config": cfg.model_dump(mode="json"),
        "input": {"path": str(plan.input_path), "sha256": input_hash},
        "plugins": _plugin_versions(plan, plugins),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": {},
    }
    atomic_write_text(run_dir / MANIFEST, dumps(manifest, indent=2))
    if not resume:
        _clear_previous_run(run_dir, store, previous)
    result = RunResult(run_dir)
    fingerprints: dict[str, str] = {}
    live: list[Stage] = []
    from synapse_toolkit.engines import make_engine

    engine = make_engine(cfg.execution, (lambda m: on_stage("engine", m)) if on_stage else None)
    try:
        for ps in plan.stages:
            fp = _fingerprint(ps, fingerprints, input_hash)
            fingerprints[ps.name] = fp
            prev = old_stages.get(ps.name)
            problems = (
                [p for r in prev["outputs"].values() if (p := store.problem(r))]
                if prev and prev.get("fingerprint") == fp
                else ["changed"]
            )
            if problems and prev and prev.get("fingerprint") == fp and on_stage:
                on_stage(ps.name, f"rerunning: {problems[0]}")
            if resume and prev and not problems:
                for port, rec in prev["outputs"].items():
                    result.artifacts[f"{ps.name}.{port}"] = store.load(rec)
                manifest["stages"][ps.name] = prev
                result.stages.append(StageResult(ps.name, "skipped", 0.0, prev["outputs"]))
                if on_stage:
                    on_stage(ps.name, "skipped")
                continue
            missing = [
                f"{s}.{port}"
                for s, port in ps.inputs.values()
                if f"{s}.{port}" not in result.artifacts
            ]
            if missing and ps.skip_if_missing:
                result.stages.append(StageResult(ps.name, f"skipped: no {missing[0]}", 0.0, {}))
                if on_stage:
                    on_stage(ps.name, f"skipped (no {missing[0]})")
                continue
            if on_stage:
                on_stage(ps.name, "running")
            inputs = {  # an optional input whose source produced nothing is left out
                p: _artifact(result, s, port, ps.name, p)
                for p, (s, port) in ps.inputs.items()
                if ps.cls.inputs[p].required or f"{s}.{port}" in result.artifacts
            }
            check_grids(f"stage {ps.name} ({ps.cls.name})", ps.cls.inputs, inputs)
            scratch = store.new_scratch(ps.name)
            ctx = StageContext(
                stage_name=ps.name,
                scratch_dir=scratch,
                input_path=plan.input_path,
                run_dir=run_dir,
                n_threads=cfg.run.n_threads,
                block_shape=cfg.run.block_shape,
                engine=engine,
            )
            if progress_factory is not None:
                ctx.progress_factory = progress_factory
            t0 = time.perf_counter()
            release_free_memory()
            reset_peak()
            stage = ps.cls(ps.options, ctx)
            live.append(stage)
            try:
                outputs = stage.run(inputs)
            except SyntkError as exc:
                raise type(exc)(f"stage {ps.name} ({ps.cls.kind} {ps.cls.name}): {exc}") from exc
            except Exception as exc:
                raise PluginError(f"stage {ps.name} ({ps.cls.kind} {ps.cls.name}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
            outputs = check_outputs(ps, outputs)
            records: dict[str, dict[str, Any]] = {}
            for port, value in outputs.items():
                out_type = ps.cls.outputs[port].type
                records[port] = store.save(ps.name, port, value, scratch, out_type)
                result.artifacts[f"{ps.name}.{port}"] = (
                    store.load(records[port]) if out_type in artifact_types.VOLUME_TYPES else value
                )
            shutil.rmtree(scratch, ignore_errors=True)
            seconds = time.perf_counter() - t0
            manifest["stages"][ps.name] = {
                "kind": ps.cls.kind,
                "plugin": ps.cls.name,
                "plugin_version": ps.cls.version,
                "fingerprint": fp,
                "seconds": round(seconds, 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                **_throughput(inputs, outputs, seconds),
                "outputs": records,
                **({"notes": ctx.notes} if ctx.notes else {}),
            }
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            atomic_write_text(run_dir / MANIFEST, dumps(manifest, indent=2))
            result.stages.append(StageResult(ps.name, "ran", seconds, records))
            if on_stage:
                on_stage(ps.name, "done")
        manifest["execution"] = engine.describe()
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        manifest["status"] = "complete"
        atomic_write_text(run_dir / MANIFEST, dumps(manifest, indent=2))
    finally:
        for stage in live:
            stage.close()
        engine.close()
        store.clear_scratch()
    result.store = store
    return result


def _throughput(inputs: Mapping[str, Any], outputs: Mapping[str, Any], seconds: float) -> dict:
    """Mvox/s over the stage's largest volume, and the largest peak RSS of any block worker
    process so far (the main process's own peak is ``peak_rss_mb``)."""
    from synapse_toolkit.data import Volume

    sizes = [
        v.spatial_shape[0] * v.spatial_shape[1] * v.spatial_shape[2]
        for v in (*inputs.values(), *outputs.values())
        if isinstance(v, Volume)
    ]
    out: dict[str, float] = {}
    if sizes and seconds > 0:
        out["mvox_per_s"] = round(max(sizes) / 1e6 / seconds, 3)
    workers = children_peak_rss_mb()
    if workers > 0:
        out["workers_peak_rss_mb"] = round(workers, 1)
    return out


def check_outputs(ps: PlannedStage, outputs: Any) -> dict[str, Any]:
    """A stage's returned outputs checked against its ports: no undeclared port, every
    required port present, every value of the port's type, dimensions, channels and dtype."""
    where = f"stage {ps.name} ({ps.cls.kind} {ps.cls.name})"
    if outputs is None:
        outputs = {}
    if not isinstance(outputs, dict):
        raise PluginError(f"{where} returned {type(outputs).__name__}, not a dict of outputs")
    for port, value in outputs.items():
        spec = ps.cls.outputs.get(port)
        if spec is None:
            raise PluginError(f"{where} returned undeclared output {port!r}")
        problem = spec.problem(value)
        if problem:
            raise PluginError(f"{where}: output {port!r} {problem}")
    missing = [p for p, spec in ps.cls.outputs.items() if spec.required and p not in outputs]
    if missing:
        raise PluginError(f"{where} did not produce required output(s) {', '.join(missing)}")
    return outputs


def _artifact(result: RunResult, stage: str, port: str, consumer: str, cport: str) -> Any:
    key = f"{stage}.{port}"
    if key not in result.artifacts:
        raise DataError(f"stages.{consumer}.inputs.{cport}: stage {stage!r} produced no {port!r} "
                        "(its input has no such data)")  # fmt: skip
    return result.artifacts[key]


def _is_within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except ValueError:
        return False
