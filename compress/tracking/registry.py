"""The MLflow model registry as `compress registry list | show | promote | compare` sees it.

Versions are created by `compress export --register NAME` (see MlflowTracker.register_onnx);
this module reads them and moves aliases. Every failure a user can cause (unknown model,
version or alias) is a UserError naming what exists.
"""

from __future__ import annotations

from compress.errors import UserError
from compress.tracking.mlflow_tracker import (_import_mlflow, check_alias, check_reachable,
                                              default_tracking_uri)

# Export-run metrics worth putting side by side (whatever of them the version's run logged).
COMPARED_RUN_METRICS = ("onnx_bytes", "parity_rel_error", "onnx_test_accuracy", "onnx_test_auc")


class Registry:
    def __init__(self) -> None:
        mlflow = _import_mlflow()
        from mlflow.exceptions import MlflowException
        self._MlflowException = MlflowException
        self.uri = default_tracking_uri()
        check_reachable(self.uri)
        self._client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # --- reading ---------------------------------------------------------------------
    def models(self) -> list[dict]:
        out = []
        for m in self._client.search_registered_models(max_results=1000):
            versions = self._versions(m.name)
            out.append({"name": m.name, "versions": len(versions),
                        "latest": max((int(v.version) for v in versions), default=None),
                        "aliases": {a: str(v) for a, v in sorted((m.aliases or {}).items())}})
        return sorted(out, key=lambda m: m["name"])

    def show(self, name: str) -> dict:
        model = self._model(name)
        aliases_of: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases_of.setdefault(str(version), []).append(alias)
        versions = [self._describe(v, aliases_of.get(str(v.version), []))
                    for v in sorted(self._versions(name), key=lambda v: int(v.version))]
        return {"name": name, "aliases": {a: str(v) for a, v in (model.aliases or {}).items()},
                "versions": versions}

    def compare(self, name: str, v1: str, v2: str) -> dict:
        self._model(name)
        a, b = (self._describe(self._version(name, v)) for v in (v1, v2))
        keys = sorted({*a["tags"], *b["tags"]} - {"mlflow.source.type"})
        rows = [{"key": k, v1: a["tags"].get(k), v2: b["tags"].get(k)} for k in keys]
        rows += [{"key": f"run.{k}", v1: a["run_metrics"].get(k), v2: b["run_metrics"].get(k)}
                 for k in sorted({*a["run_metrics"], *b["run_metrics"]})]
        return {"name": name, "versions": [str(v1), str(v2)], "rows": rows}

    # --- writing ---------------------------------------------------------------------
    def promote(self, name: str, version: str, alias: str) -> dict:
        check_alias(alias)
        self._model(name)
        mv = self._version(name, version)
        previous = self._alias_target(name, alias)
        self._client.set_registered_model_alias(name, alias, str(mv.version))
        self._client.set_model_version_tag(name, str(mv.version), f"promoted.{alias}", "true")
        return {"name": name, "alias": alias, "version": str(mv.version), "previous": previous}

    # --- helpers ---------------------------------------------------------------------
    def _model(self, name: str):
        try:
            return self._client.get_registered_model(name)
        except self._MlflowException:
            known = [m["name"] for m in self.models()]
            raise UserError(f"no registered model {name!r} in {self.uri}; registered: "
                            f"{', '.join(known) or 'none'} (create one with "
                            "`compress export --register NAME`)") from None

    def _versions(self, name: str) -> list:
        return list(self._client.search_model_versions(f"name = '{name}'", max_results=10000))

    def _version(self, name: str, version: str):
        try:
            return self._client.get_model_version(name, str(int(version)))
        except (ValueError, self._MlflowException):
            have = sorted(int(v.version) for v in self._versions(name))
            raise UserError(f"{name!r} has no version {version!r}; versions: "
                            f"{', '.join(map(str, have)) or 'none'}") from None

    def _alias_target(self, name: str, alias: str) -> str | None:
        try:
            return str(self._client.get_model_version_by_alias(name, alias).version)
        except self._MlflowException:
            return None

    def _describe(self, mv, aliases: list[str] | None = None) -> dict:
        metrics = {}
        if mv.run_id:
            try:
                run_metrics = self._client.get_run(mv.run_id).data.metrics
            except self._MlflowException:
                run_metrics = {}
            metrics = {k: v for k, v in run_metrics.items()
                       if k in COMPARED_RUN_METRICS or k.startswith(("latency", "params", "macs"))}
        return {"version": str(mv.version), "aliases": sorted(aliases or []), "run_id": mv.run_id,
                "created": mv.creation_timestamp, "tags": dict(sorted((mv.tags or {}).items())),
                "run_metrics": dict(sorted(metrics.items()))}
