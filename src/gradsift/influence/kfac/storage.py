"""K-FAC factors on disk: a directory with ``manifest.json`` and one ``<stage>.pt`` per pass.

Layout::

    factors/
        manifest.json      # format, model fingerprint, tracked layers, settings, stage progress
        covariance.pt      # {"sums": {"A/<layer>", "S/<layer>", "P/<layer>", "n"}, "batches_done"}
        eigenvalues.pt     # EK-FAC correction: {"sums": {"L/<layer>", "n"}, "batches_done"}

``sums`` are float64 running sums over the first ``batches_done`` batches of the data
(in data order, ``batch_size`` rows each), so a killed fit resumes from the last
checkpoint. The manifest refuses a model with another fingerprint
(:func:`gradsift.store.gradient_store.model_fingerprint`), other tracked layers or other
settings. Files are replaced atomically (write, then ``os.replace``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from gradsift.errors import GradsiftError

__all__ = ["FactorStore"]

FORMAT = "gradsift-kfac-factors"
VERSION = 1


class FactorStore:
    """Read and write one factor directory.

    Args:
        path: the directory (created when missing).
        header: ``{"fingerprint", "layers", "settings"}`` that a stored directory must match.
    """

    def __init__(self, path: str | Path, header: dict[str, Any]) -> None:
        self.path = Path(path)
        self.header = json.loads(json.dumps(header))  # JSON-normalised for comparison
        self.manifest: dict[str, Any] = {}

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    def open(self, create: bool) -> None:
        """Check an existing manifest against the header, or (``create``) start a new one."""
        if self.manifest_path.exists():
            manifest = json.loads(self.manifest_path.read_text())
            self._check(manifest)
            self.manifest = manifest
            return
        self.manifest = {"format": FORMAT, "version": VERSION, **self.header, "stages": {}}
        if create:
            self.path.mkdir(parents=True, exist_ok=True)
            self._write_manifest()

    def _check(self, manifest: dict[str, Any]) -> None:
        if manifest.get("format") != FORMAT:
            raise GradsiftError(f"{self.path} is not a K-FAC factor directory")
        if manifest.get("fingerprint") != self.header["fingerprint"]:
            raise GradsiftError(
                f"the K-FAC factors at {self.path} were fitted on another model (fingerprint "
                f"{manifest.get('fingerprint')}, this model {self.header['fingerprint']}): "
                "use a new directory or delete it"
            )
        for key in ("layers", "settings"):
            if manifest.get(key) != self.header[key]:
                raise GradsiftError(
                    f"the K-FAC factors at {self.path} have other {key} "
                    f"({manifest.get(key)} vs {self.header[key]}): use a new directory"
                )

    def stage(self, name: str) -> tuple[dict[str, torch.Tensor] | None, int, bool]:
        """``(sums or None, batches_done, complete)`` of stage ``name``."""
        info = self.manifest.get("stages", {}).get(name)
        file = self.path / f"{name}.pt"
        if info is None or not file.exists():
            return None, 0, False
        state = torch.load(file, map_location="cpu", weights_only=True)
        if int(state["batches_done"]) != int(info["batches_done"]):
            raise GradsiftError(f"{file} and the manifest disagree: delete {self.path}")
        return state["sums"], int(state["batches_done"]), bool(info["complete"])

    def save_stage(
        self, name: str, sums: dict[str, torch.Tensor], batches_done: int, complete: bool
    ) -> None:
        """Write stage ``name``'s sums, then record its progress in the manifest."""
        file = self.path / f"{name}.pt"
        tmp = file.with_suffix(".pt.tmp")
        cpu = {k: v.detach().cpu() for k, v in sums.items()}
        torch.save({"sums": cpu, "batches_done": batches_done}, tmp)
        os.replace(tmp, file)
        self.manifest.setdefault("stages", {})[name] = {
            "batches_done": batches_done,
            "complete": complete,
            "samples": int(round(float(sums["n"]))),
        }
        self._write_manifest()

    def _write_manifest(self) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.manifest, indent=2))
        os.replace(tmp, self.manifest_path)
