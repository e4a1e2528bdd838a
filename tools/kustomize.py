"""A small, honest kustomize: `resources` (files and directories), `patches` (strategic-merge patches by path, the
only kind the overlays use), `images` and `namespace`. There is no kustomize binary here; a kustomization using
anything else raises KustomizeError rather than being rendered wrong. The manifest tests validate its output and
the kube-play tests start the pods it renders.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml


class KustomizeError(ValueError):
    """The kustomization uses something this renderer does not implement, or is inconsistent."""


KUSTOMIZATION_KEYS = {"apiVersion", "kind", "resources", "patches", "images", "namespace"}
# Strategic-merge keys of the lists the patches touch (as in the Kubernetes API's patchMergeKey).
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath"}  # fmt: skip
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PersistentVolume", "StorageClass",
                  "CustomResourceDefinition", "PriorityClass", "APIService"}  # fmt: skip


def load_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def strategic_merge(base: Any, patch: Any) -> Any:
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            merge_key = MERGE_KEYS[key]
            items = out[key]
            for item in value:
                match = [i for i, existing in enumerate(items) if existing.get(merge_key) == item.get(merge_key)]
                if match:
                    items[match[0]] = strategic_merge(items[match[0]], item)
                else:
                    items.append(copy.deepcopy(item))
        elif key in out:
            out[key] = strategic_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def pod_containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


def image_name(image: str) -> str:
    image = image.split("@", 1)[0]
    last = image.rsplit("/", 1)[-1]
    return image.rsplit(":", 1)[0] if ":" in last else image


def render(directory: Path) -> list[dict[str, Any]]:
    """The resources `directory/kustomization.yaml` builds, as `kubectl kustomize` would for this subset."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kustomization) - KUSTOMIZATION_KEYS
    if unknown:
        raise KustomizeError(f"{directory}: this kustomize subset does not implement {unknown}")
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = (directory / resource).resolve()
        if not path.exists():
            raise KustomizeError(f"{directory}/kustomization.yaml: resource {resource} does not exist")
        docs += render(path) if path.is_dir() else load_docs(path)
    for patch in kustomization.get("patches", []):
        if set(patch) != {"path"}:
            raise KustomizeError(f"only strategic-merge patches by path are implemented, got {patch}")
        for change in load_docs(directory / patch["path"]):
            key = (change["kind"], change["metadata"]["name"])
            targets = [i for i, d in enumerate(docs) if (d["kind"], d["metadata"]["name"]) == key]
            if len(targets) != 1:
                raise KustomizeError(f"patch {patch['path']} matches {len(targets)} resources")
            docs[targets[0]] = strategic_merge(docs[targets[0]], change)
    for entry in kustomization.get("images", []):
        if not set(entry) <= {"name", "newName", "newTag", "digest"}:
            raise KustomizeError(f"unsupported images entry {entry}")
        hits = 0
        for doc in docs:
            for container in pod_containers(doc):
                if image_name(container["image"]) == entry["name"]:
                    name = entry.get("newName", entry["name"])
                    if "digest" in entry:
                        container["image"] = f"{name}@{entry['digest']}"
                    else:
                        tag = entry.get("newTag", container["image"][len(entry["name"]) + 1 :])
                        container["image"] = f"{name}:{tag}"
                    hits += 1
        if not hits:
            raise KustomizeError(f"{directory}: images entry {entry['name']} matches no container")
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] in CLUSTER_SCOPED:
                raise KustomizeError(f"{doc['kind']} is cluster-scoped")
            doc["metadata"]["namespace"] = kustomization["namespace"]
    keys = [(d["kind"], d["metadata"]["name"]) for d in docs]
    if len(keys) != len(set(keys)):
        raise KustomizeError(f"duplicate resources: {keys}")
    return docs
