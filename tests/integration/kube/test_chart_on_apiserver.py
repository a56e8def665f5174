"""What we ship, on a real API server (``kube_control_plane``: kube-apiserver v1.20.2 built
by scripts/build-kubernetes.sh, or the cluster STATEHOLD_TEST_KUBECONFIG names).

* Every CRD of the chart installs, is Established, and is structural (no NonStructural
  condition); the server keeps every field we sent except the ones the version is known
  not to have (:data:`KNOWN_DROPS`).
* Every object the chart renders, for every value set the repo renders elsewhere (the unit
  tests' sets, ``ci/*.yaml``, the install guide's values), the plain manifests under
  deploy/ and every file in examples/ pass the server's own validation: a server-side
  dry run (``dryRun=All``: admitted, validated, defaulted, not stored). An older server
  silently drops fields it does not know (there is no strict field validation before
  1.25), so "accepted" also means "nothing dropped" beyond :data:`KNOWN_DROPS`.
* The server refuses a StoragePool/VolumeRestore size of ``0`` or ``"20 gigs"`` (422
  Invalid) and accepts ``"20Gi"`` and ``21474836480``, as the in-memory admission does.
* The offline structural checker (tests/unit/controller/structural.py) agrees with the
  server on what is structural.

Only Namespaces and CRDs are really created (namespaced dry runs need their namespace);
both are removed at the end if this module created them.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from statehold.controller.schemas import validate_custom_resource
from statehold.errors import InvalidArgument
from tests.fixtures.controlplane import ControlPlane
from tests.unit.controller.structural import check_schema
from tests.unit.kube.validation import ROOT, render

HERE = Path(__file__).resolve().parent
SNAPSHOT_CRDS = sorted((HERE / "crds" / "external-snapshotter-v8.6.0").glob("*.yaml"))
CHART_CRDS = sorted((render.CHART / "crds").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
# Plain manifests beside the chart (the chart's own files are rendered, not read), less the
# files that are not API objects (a kube-scheduler reads its configuration from disk).
NOT_API_OBJECTS = {"kubescheduler.config.k8s.io"}
STATIC = [p for p in [ROOT / "deploy" / "manifests" / "statehold.yaml",
                      *sorted((ROOT / "deploy" / "scheduler").rglob("*.yaml"))]
          if any(d["apiVersion"].rpartition("/")[0] not in NOT_API_OBJECTS
                 for d in yaml.safe_load_all(p.read_text()) if d)]

# Fields a server of an older minor version does not have and drops without an error,
# each with the last minor version that drops it and why. Nothing else may be dropped.
KNOWN_DROPS: list[tuple[str, str, int, str]] = [
    # (kind, path regex, dropped up to minor, reason)
    ("CustomResourceDefinition", r"\.x-kubernetes-validations$", 24,
     "CEL validation rules: alpha in 1.23 behind CustomResourceValidationExpressions, on by "
     "default from 1.25; older servers drop them, so only the structural schema is enforced "
     "(the rules are checked offline against cel-python in tests/unit/controller)"),
    ("CSIDriver", r"^spec\.storageCapacity$", 20,
     "CSIDriver.spec.storageCapacity is alpha in 1.20 (feature gate CSIStorageCapacity, "
     "off by default), beta and on from 1.21: a 1.20 scheduler does not use capacity"),
]


# -- a tiny REST client over the official one ---------------------------------------------

class Api:
    """Raw JSON calls to the API server; REST paths found through discovery."""

    def __init__(self, kubeconfig: Path) -> None:
        cfg = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
        self.client = kubernetes.client.ApiClient(cfg)
        self._discovered: dict[str, dict[str, tuple[str, bool]]] = {}
        info = self.call("GET", "/version")
        self.version = f"{info['major']}.{info['minor']}"
        self.minor = int(re.sub(r"\D.*", "", info["minor"]))

    def call(self, method: str, path: str, body: Any = None,
             query: list[tuple[str, str]] | None = None) -> Any:
        resp = self.client.call_api(
            path, method, query_params=query or [], body=body,
            header_params={"Accept": "application/json", "Content-Type": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True,
            _request_timeout=60)
        return json.loads(resp.data or b"null")

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind, from the server's discovery."""
        if api_version not in self._discovered:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            found = self.call("GET", base)["resources"]
            self._discovered[api_version] = {r["kind"]: (r["name"], r["namespaced"])
                                             for r in found if "/" not in r["name"]}
        return self._discovered[api_version][kind]

    def path(self, obj: dict[str, Any], *, named: bool = False) -> str:
        api_version, meta = obj["apiVersion"], obj["metadata"]
        plural, namespaced = self.resource(api_version, obj["kind"])
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        ns = f"/namespaces/{meta.get('namespace') or 'default'}" if namespaced else ""
        return f"{base}{ns}/{plural}" + (f"/{meta['name']}" if named else "")

    def create(self, obj: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        query = [("dryRun", "All")] if dry_run else []
        return dict(self.call("POST", self.path(obj), obj, query))

    def dry_run_apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """What the server would store for obj: a dry-run create, or a dry-run replace of
        the object that already exists (a Namespace, a CRD installed above)."""
        try:
            return self.create(obj, dry_run=True)
        except ApiException as exc:
            if exc.status != 409:
                raise
        current = self.call("GET", self.path(obj, named=True))
        return dict(self.call("PUT", self.path(obj, named=True), at_version(obj, current),
                              [("dryRun", "All")]))

    def exists(self, obj: dict[str, Any]) -> bool:
        try:
            self.call("GET", self.path(obj, named=True))
            return True
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise

    def delete(self, obj: dict[str, Any]) -> None:
        try:
            self.call("DELETE", self.path(obj, named=True))
        except ApiException as exc:
            if exc.status != 404:
                raise

    def forget_discovery(self) -> None:
        self._discovered.clear()


def failure(exc: ApiException) -> str:
    """HTTP status and the server's message."""
    try:
        message = json.loads(exc.body)["message"]
    except (TypeError, ValueError, KeyError):
        message = str(exc.body)
    return f"{exc.status}: {message}"


def dropped(sent: Any, got: Any, path: str = "") -> list[str]:
    """Paths set in sent that the server's answer lacks. Go zero values (false, 0, "",
    empty lists and maps) count as unset: the server omits them."""
    if isinstance(sent, dict) and isinstance(got, dict):
        out: list[str] = []
        for key, value in sent.items():
            if value in (None, False, 0, "", [], {}):
                continue
            sub = f"{path}.{key}" if path else key
            out += [sub] if key not in got else dropped(value, got[key], sub)
        return out
    if isinstance(sent, list) and isinstance(got, list):
        out = [p for i, (a, b) in enumerate(zip(sent, got, strict=False))
               for p in dropped(a, b, f"{path}[{i}]")]
        return out + ([f"{path}[{len(got)}:]"] if len(got) < len(sent) else [])
    return []


def unexpected_drops(api: Api, sent: dict[str, Any], got: dict[str, Any]) -> list[str]:
    if sent["kind"] == "Secret" and "stringData" in sent:
        # write-only: the server moves it into data (base64); check it arrived there
        missing = set(sent["stringData"]) - set(got.get("data") or {})
        sent = {k: v for k, v in sent.items() if k != "stringData"}
        if missing:
            return [f"stringData (keys {sorted(missing)} not in data)"]
    return [p for p in dropped(sent, got)
            if not any(kind == sent["kind"] and re.search(rx, p) and api.minor <= upto
                       for kind, rx, upto, _ in KNOWN_DROPS)]


def load(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def name_of(obj: dict[str, Any]) -> str:
    ns = obj["metadata"].get("namespace")
    return f"{obj['kind']} {ns + '/' if ns else ''}{obj['metadata']['name']}"


# -- install -----------------------------------------------------------------------------------

def wait_established(api: Api, name: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        crd = api.call("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
        conds = {c["type"]: c for c in (crd.get("status") or {}).get("conditions") or []}
        if conds.get("Established", {}).get("status") == "True" or time.monotonic() > deadline:
            return dict(crd)
        time.sleep(0.2)


def at_version(obj: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """obj as a replacement of current (its resourceVersion)."""
    return {**obj, "metadata": {**obj["metadata"],
                                "resourceVersion": current["metadata"]["resourceVersion"]}}


class Installed:
    """The CRDs and Namespaces this module created (removed at the end) or replaced (put
    back at the end), and what the server answered for each CRD."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.created: list[dict[str, Any]] = []
        self.replaced: list[dict[str, Any]] = []
        self.crds: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}  # name: (sent, stored)

    def crd(self, crd: dict[str, Any]) -> None:
        name, path = crd["metadata"]["name"], self.api.path(crd, named=True)
        try:
            if self.api.exists(crd):
                # there already (another module's, or a Statehold installed on the cluster
                # STATEHOLD_TEST_KUBECONFIG names): ours for now, theirs back at the end
                current = self.api.call("GET", path)
                self.api.call("PUT", path, at_version(crd, current))
                self.replaced.append(current)
            else:
                self.api.create(crd)
                self.created.append(crd)
        except ApiException as exc:
            pytest.fail(f"the API server ({self.api.version}) refused CRD {name}: "
                        f"{failure(exc)}", pytrace=False)
        self.crds[name] = (crd, wait_established(self.api, name))

    def namespace(self, name: str) -> None:
        ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        if not self.api.exists(ns):
            self.api.create(ns)
            self.created.append(ns)

    def remove(self) -> None:
        for obj in reversed(self.created):
            self.api.delete(obj)
        for old in self.replaced:
            path = self.api.path(old, named=True)
            self.api.call("PUT", path, at_version(old, self.api.call("GET", path)))


@pytest.fixture(scope="module")
def api(kube_control_plane: ControlPlane) -> Api:
    return Api(kube_control_plane.kubeconfig)


@pytest.fixture(scope="module")
def installed(api: Api) -> Iterator[Installed]:
    inst = Installed(api)
    try:
        # The CRDs go in as they are, x-kubernetes-validations included: a 1.20 server
        # accepts and drops them (KNOWN_DROPS), it does not refuse the CRD.
        for path in [*CHART_CRDS, *SNAPSHOT_CRDS]:
            for crd in load(path):
                inst.crd(crd)
        api.forget_discovery()
        yield inst
    finally:
        inst.remove()


# -- CRDs --------------------------------------------------------------------------------------

def test_the_chart_ships_every_crd() -> None:
    from statehold.controller.crds import all_crds

    assert {p.name for p in CHART_CRDS} == {f"{c['metadata']['name']}.yaml" for c in all_crds()}


@pytest.mark.parametrize("path", CHART_CRDS, ids=lambda p: p.name)
def test_chart_crd_is_established_structural_and_kept_whole(
        api: Api, installed: Installed, path: Path) -> None:
    (crd,) = load(path)
    sent, stored = installed.crds[crd["metadata"]["name"]]
    conds = {c["type"]: c for c in stored["status"].get("conditions", [])}
    assert conds["Established"]["status"] == "True", conds
    assert conds["NamesAccepted"]["status"] == "True", conds
    assert "NonStructural" not in conds or conds["NonStructural"]["status"] != "True", \
        conds.get("NonStructural")
    assert unexpected_drops(api, sent, stored) == []


# -- everything else, dry run --------------------------------------------------------------

def value_sets() -> list[tuple[str, dict[str, Any], str, str]]:
    """(id, values, release, namespace): every set of values the repo renders the chart
    with elsewhere, so the real server sees each shape of the output."""
    from tests.unit.kube import test_deploy
    from tests.unit.kube.test_deploy_shared import SHARED, values_blocks

    sets: list[tuple[str, dict[str, Any], str, str]] = [
        ("defaults", {}, render.RELEASE, render.NAMESPACE)]
    # test_deploy's parametrized value sets, read from its mark so the two cannot drift
    (mark,) = [m for m in test_deploy.test_chart_output_with_other_values_is_valid.pytestmark
               if m.name == "parametrize"]
    sets += [(f"test_deploy[{i}]", v, "sh", "storage") for i, v in enumerate(mark.args[1])]
    sets += [(f"ci/{p.name}", yaml.safe_load(p.read_text()), render.RELEASE, render.NAMESPACE)
             for p in sorted((render.CHART / "ci").glob("*.yaml"))]
    sets.append(("shared+extender", {**SHARED, "schedulerExtender": {"enabled": True}},
                 render.RELEASE, render.NAMESPACE))
    guide: dict[str, Any] = {}
    for block in values_blocks(ROOT / "docs" / "install.md"):
        guide.update(block)
    sets.append(("docs/install.md", guide, render.RELEASE, render.NAMESPACE))
    return sets


VALUE_SETS = value_sets()


def dry_run_all(api: Api, installed: Installed, docs: list[dict[str, Any]]) -> list[str]:
    """Each object through a server-side dry run: the problems, one line each."""
    problems = []
    for ns in sorted({d["metadata"]["name"] for d in docs if d["kind"] == "Namespace"}
                     | {d["metadata"]["namespace"] for d in docs
                        if d["metadata"].get("namespace")}):
        installed.namespace(ns)
    for doc in docs:
        try:
            got = api.dry_run_apply(doc)
        except ApiException as exc:
            problems.append(f"{name_of(doc)}: refused: {failure(exc)}")
            continue
        except KeyError:
            problems.append(f"{name_of(doc)}: the server has no {doc['apiVersion']} "
                            f"{doc['kind']}")
            continue
        if lost := unexpected_drops(api, doc, got):
            problems.append(f"{name_of(doc)}: the server dropped {lost}")
    return problems


@pytest.mark.parametrize(("values", "release", "namespace"),
                         [v[1:] for v in VALUE_SETS], ids=[v[0] for v in VALUE_SETS])
def test_every_rendered_object_passes_a_server_dry_run(
        api: Api, installed: Installed, values: dict[str, Any], release: str,
        namespace: str) -> None:
    docs = render.render_chart(values, name=release, namespace=namespace)
    assert len(docs) > 20
    installed.namespace(namespace)  # `namespace.create: false` sets expect it to exist
    assert dry_run_all(api, installed, docs) == []


@pytest.mark.parametrize("path", STATIC, ids=lambda p: str(p.relative_to(ROOT)))
def test_plain_manifests_pass_a_server_dry_run(api: Api, installed: Installed, path: Path) -> None:
    docs = [d for d in load(path)
            if d["apiVersion"].rpartition("/")[0] not in NOT_API_OBJECTS]
    assert docs
    assert dry_run_all(api, installed, docs) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_pass_a_server_dry_run(api: Api, installed: Installed, path: Path) -> None:
    docs = load(path)
    assert docs
    assert dry_run_all(api, installed, docs) == []


# -- sizes: the API server itself refuses 0 and "20 gigs" -----------------------------------

def sized(kind: str, value: Any) -> dict[str, Any]:
    if kind == "StoragePool":
        return {"apiVersion": "statehold.io/v1alpha1", "kind": "StoragePool",
                "metadata": {"name": "sized"},
                "spec": {"node": "n1", "directory": "/var/lib/statehold", "imageSize": value}}
    return {"apiVersion": "statehold.io/v1alpha1", "kind": "VolumeRestore",
            "metadata": {"name": "sized", "namespace": "default"},
            "spec": {"backup": "b", "persistentVolumeClaimName": "r", "size": value}}


FIELD = {"StoragePool": "imageSize", "VolumeRestore": "size"}


@pytest.mark.parametrize("value", [0, "20 gigs", -1, "1" * 65])
@pytest.mark.parametrize("kind", ["StoragePool", "VolumeRestore"])
def test_the_server_refuses_a_zero_or_malformed_size(
        api: Api, installed: Installed, kind: str, value: Any) -> None:
    with pytest.raises(ApiException) as caught:
        api.create(sized(kind, value), dry_run=True)
    assert caught.value.status == 422, failure(caught.value)
    assert json.loads(caught.value.body)["reason"] == "Invalid"
    assert f"spec.{FIELD[kind]}" in failure(caught.value)
    # the in-memory API (tests, kubectl plugin) refuses it too
    with pytest.raises(InvalidArgument):
        validate_custom_resource(sized(kind, value))


@pytest.mark.parametrize("value", ["20Gi", 21474836480, "512M", 1])
@pytest.mark.parametrize("kind", ["StoragePool", "VolumeRestore"])
def test_the_server_accepts_a_quantity_or_a_byte_count(
        api: Api, installed: Installed, kind: str, value: Any) -> None:
    got = api.create(sized(kind, value), dry_run=True)
    assert got["spec"][FIELD[kind]] == value
    assert validate_custom_resource(sized(kind, value))["spec"][FIELD[kind]] == value


# -- the offline structural checker agrees with the server -----------------------------------

def probe_crd(schema: dict[str, Any], i: int) -> dict[str, Any]:
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"probes{i}.checker.statehold.io"},
            "spec": {"group": "checker.statehold.io", "scope": "Namespaced",
                     "names": {"kind": f"Probe{i}", "plural": f"probes{i}"},
                     "versions": [{"name": "v1", "served": True, "storage": True,
                                   "schema": {"openAPIV3Schema": schema}}]}}


def size(prop: dict[str, Any]) -> dict[str, Any]:
    """A root schema with prop as spec.size."""
    return {"type": "object", "properties": {"spec": {
        "type": "object", "properties": {"size": prop}}}}


INT_OR_STRING = {"x-kubernetes-int-or-string": True,
                 "anyOf": [{"type": "integer"}, {"type": "string"}]}
PROBES: list[dict[str, Any]] = [
    # what the chart shipped before: refused
    size({"x-kubernetes-int-or-string": True,
          "anyOf": [{"type": "integer", "minimum": 1},
                    {"type": "string", "pattern": "^[0-9]+$", "maxLength": 64}]}),
    # what it ships now: accepted
    size({**INT_OR_STRING, "minimum": 1, "pattern": "^[0-9]+$", "maxLength": 64,
          "description": "d"}),
    size({"x-kubernetes-int-or-string": True,
          "allOf": [{"anyOf": [{"type": "integer"}, {"type": "string"}]}, {"minimum": 1}]}),
    size({"anyOf": [{"type": "integer"}, {"type": "string"}]}),
    size({"type": "string", "anyOf": [{"pattern": "a", "description": "d"}, {"maxLength": 3}]}),
    size({"type": "string", "oneOf": [{"pattern": "a", "nullable": True}]}),
    size({"type": "object", "not": {"additionalProperties": {"type": "string"}}}),
    size({"type": "array"}),
    # rule 2 (a field named only inside a junctor); the server checks it at the root only
    {"type": "object", "properties": {"spec": {"type": "object"}},
     "allOf": [{"properties": {"status": {"required": ["a"]}}}]},
    {"type": "object", "properties": {"spec": {"type": "object"}},
     "anyOf": [{"properties": {"spec": {"required": ["a"]}}}, {"required": ["spec"]}]},
]


@pytest.mark.parametrize("i", range(len(PROBES)))
def test_the_offline_checker_agrees_with_the_server(api: Api, i: int) -> None:
    crd = probe_crd(PROBES[i], i)
    offline = check_schema(PROBES[i], "spec.versions[0].schema.openAPIV3Schema")
    try:
        api.create(crd, dry_run=True)
        server = None
    except ApiException as exc:
        assert exc.status == 422, failure(exc)
        server = failure(exc)
    assert (server is None) == (offline == []), (offline, server)
    # same places, same verdicts ("Forbidden", "Required value"); a 1.20 server names the
    # schema spec.validation.openAPIV3Schema (its internal form), later ones
    # spec.versions[0].schema.openAPIV3Schema, so compare from openAPIV3Schema on
    for violation in offline:
        where, _, what = violation.partition(": ")
        assert server is not None, violation
        assert f"{where.partition('.schema.')[2]}: {what.split(':')[0]}" in server, \
            (violation, server)
