"""Plan and run a pipeline: validate every stage against its plugin, order by dependencies,
run each stage once, store its artifacts atomically, record a manifest, resume on request.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from synapse_toolkit import __version__
from synapse_toolkit.artifacts import ArtifactStore, atomic_write_text
from synapse_toolkit.config import PipelineConfig, format_validation_error
from synapse_toolkit.errors import ConfigError, DataError, PluginError, SyntkError
from synapse_toolkit.plugin_manager import PluginSet, get_plugins
from synapse_toolkit.stage_registry import RegisteredStage
from synapse_toolkit.stages import ProgressFactory, Stage, StageContext, StageOptions

MANIFEST = "manifest.json"
_VOLUME_TYPES = {"volume", "labels"}


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


def _types_compatible(produced: str, wanted: str) -> bool:
    return produced == wanted or (produced in _VOLUME_TYPES and wanted in _VOLUME_TYPES)


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
            options = registered.cls.Options.model_validate(sc.options)
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, prefix=f"{key}.options")) from None
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
            want = ps.cls.inputs[port].type
            if not _types_compatible(out.type, want):
                raise ConfigError(f"{key}: '{src_stage}.{src_port}' is {out.type}, "
                                  f"but {ps.cls.name} expects {want}")  # fmt: skip

    order = _topological(planned)
    input_path = resolve_input(config, download=download) if check_input else Path()
    return Plan(config, [planned[n] for n in order], input_path)


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
def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fingerprint(ps: PlannedStage, upstream: dict[str, str], input_hash: str) -> str:
    doc = {
        "kind": ps.cls.kind,
        "plugin": ps.cls.name,
        "plugin_version": ps.cls.version,
        "options": ps.options.model_dump(mode="json"),
        "inputs": {p: f"{upstream[s]}:{port}" for p, (s, port) in sorted(ps.inputs.items())},
        "input_file": input_hash if not ps.inputs else "",
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
    path = run_dir / MANIFEST
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


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
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan.input_path != Path() and _is_within(plan.input_path, run_dir / "artifacts"):
        raise DataError(f"output.dir: {run_dir} contains the input file {plan.input_path}; "
                        "choose another output directory")  # fmt: skip
    store = ArtifactStore(run_dir)
    old = _read_manifest(run_dir) if resume else {}
    old_stages = old.get("stages", {})
    input_hash = file_sha256(plan.input_path) if plan.input_path.is_file() else ""
    manifest: dict[str, Any] = {
        "syntk_version": __version__,
        "python": platform.python_version(),
        "config": cfg.model_dump(mode="json"),
        "input": {"path": str(plan.input_path), "sha256": input_hash},
        "plugins": _plugin_versions(plan, plugins),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "stages": {},
    }
    result = RunResult(run_dir)
    fingerprints: dict[str, str] = {}
    live: list[Stage] = []
    try:
        for ps in plan.stages:
            fp = _fingerprint(ps, fingerprints, input_hash)
            fingerprints[ps.name] = fp
            prev = old_stages.get(ps.name)
            if (
                resume
                and prev
                and prev.get("fingerprint") == fp
                and all(store.exists(r) for r in prev["outputs"].values())
            ):
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
            inputs = {
                p: _artifact(result, s, port, ps.name, p) for p, (s, port) in ps.inputs.items()
            }
            scratch = store.new_scratch(ps.name)
            ctx = StageContext(
                stage_name=ps.name,
                scratch_dir=scratch,
                input_path=plan.input_path,
                run_dir=run_dir,
                n_threads=cfg.run.n_threads,
                block_shape=cfg.run.block_shape,
                **({"progress_factory": progress_factory} if progress_factory else {}),
            )
            t0 = time.perf_counter()
            stage = ps.cls(ps.options, ctx)
            live.append(stage)
            try:
                outputs = stage.run(inputs)
            except SyntkError as exc:
                raise type(exc)(f"stage {ps.name} ({ps.cls.kind} {ps.cls.name}): {exc}") from exc
            except Exception as exc:
                raise PluginError(f"stage {ps.name} ({ps.cls.kind} {ps.cls.name}) failed: "
                                  f"{type(exc).__name__}: {exc}") from exc  # fmt: skip
            records = {}
            for port, value in (outputs or {}).items():
                if port not in ps.cls.outputs:
                    raise PluginError(
                        f"stage {ps.name} ({ps.cls.name}) returned undeclared output {port!r}"
                    )
                records[port] = store.save(ps.name, port, value, scratch)
                result.artifacts[f"{ps.name}.{port}"] = (
                    store.load(records[port]) if records[port]["type"] in _VOLUME_TYPES else value
                )
            shutil.rmtree(scratch, ignore_errors=True)
            seconds = time.perf_counter() - t0
            manifest["stages"][ps.name] = {
                "kind": ps.cls.kind,
                "plugin": ps.cls.name,
                "plugin_version": ps.cls.version,
                "fingerprint": fp,
                "seconds": round(seconds, 3),
                "outputs": records,
            }
            manifest["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))
            result.stages.append(StageResult(ps.name, "ran", seconds, records))
            if on_stage:
                on_stage(ps.name, "done")
        manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        atomic_write_text(run_dir / MANIFEST, json.dumps(manifest, indent=2))
    finally:
        for stage in live:
            stage.close()
        store.clear_scratch()
    result.store = store
    return result


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
