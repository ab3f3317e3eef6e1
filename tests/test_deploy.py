"""The deployment files parse and say what the README says they do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_the_kuberay_manifest_is_a_ray_cluster_the_grid_can_run_on() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "kuberay" / "omnigrid-raycluster.yaml").read_text()))
    cluster, service = docs
    assert (cluster["apiVersion"], cluster["kind"]) == ("ray.io/v1", "RayCluster")
    spec = cluster["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["port"] != "6379"  # Redis's port on every machine here
    pods: list[dict[str, Any]] = [head["template"]["spec"]]
    pods += [group["template"]["spec"] for group in spec["workerGroupSpecs"]]
    assert all(
        g["minReplicas"] <= g["replicas"] <= g["maxReplicas"] for g in spec["workerGroupSpecs"]
    )
    images = set()
    for pod in pods:
        (container,) = pod["containers"]
        images.add(container["image"])
        env = {e["name"]: e for e in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"  # token auth stays on
        for name in ("OMNIGRID_REDIS_URL", "OMNIGRID_POSTGRES_DSN", "OMNIGRID_IDENTITY_SECRET"):
            assert "secretKeyRef" in env[name]["valueFrom"], name  # off the pods, never inline
        assert 8000 in [p["containerPort"] for p in container["ports"]]  # every pod serves HTTP
        assert container["readinessProbe"]["httpGet"]["port"] == 8000
        stop_s = float(env["OMNIGRID_STOP_TIMEOUT_S"]["value"])
        assert pod["terminationGracePeriodSeconds"] > stop_s  # a clean stop fits
        assert container["resources"]["requests"] == container["resources"]["limits"]
    assert len(images) == 1  # one build of omnigrid on every node
    assert service["kind"] == "Service"
    assert service["spec"]["selector"].items() <= head["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == 8000
