#!/usr/bin/env bash
# Offline validation of the deployment files (no Docker, no cluster, no network):
#   1. deploy/compose.yaml against the Compose specification (check-jsonschema's built-in copy);
#   2. `kubectl kustomize deploy/k8s` rendered, then
#      - every built-in kind validated strictly by kubernetes-validate (unknown fields are
#        errors, and so is any warning: a kind/apiVersion it has no schema for is a typo, not a
#        pass);
#      - every custom resource (KEDA ScaledObject, TriggerAuthentication — kubernetes-validate
#        ships no CRD schemas) validated strictly against deploy/schemas/<group>-<kind>.schema.json;
#        a custom kind without such a schema fails.
#
# Usage: deploy/validate.sh [KUSTOMIZE_DIR] [COMPOSE_FILE]     (defaults: deploy/k8s, deploy/compose.yaml)
# Tools: CHECK_JSONSCHEMA, KUBERNETES_VALIDATE, KUBECTL, PYTHON (with PyYAML) override the
# defaults (the repo's .venv/bin, else PATH). K8S_VERSION picks the schema version
# (kubernetes-validate's default otherwise).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
kustomize_dir=${1:-$here/k8s}
compose_file=${2:-$here/compose.yaml}
schema_dir=${SCHEMA_DIR:-$here/schemas}

tool() {  # tool NAME: the repo venv's copy, else the one on PATH
  if [[ -x "$repo/.venv/bin/$1" ]]; then echo "$repo/.venv/bin/$1"; else command -v "$1" || true; fi
}
CHECK_JSONSCHEMA=${CHECK_JSONSCHEMA:-$(tool check-jsonschema)}
KUBERNETES_VALIDATE=${KUBERNETES_VALIDATE:-$(tool kubernetes-validate)}
KUBECTL=${KUBECTL:-$(command -v kubectl || true)}
if [[ -z "${PYTHON:-}" ]]; then
  # the interpreter kubernetes-validate runs on has PyYAML (its dependency)
  PYTHON=$(dirname "${KUBERNETES_VALIDATE:-/nonexistent/x}")/python
  [[ -x "$PYTHON" ]] || PYTHON=$(command -v python3 || true)
fi
for t in CHECK_JSONSCHEMA KUBERNETES_VALIDATE KUBECTL PYTHON; do
  if [[ -z "${!t}" || ! -x "${!t}" ]]; then
    echo "validate.sh: missing tool $t (${!t:-not found}); pip install '.[dev]' and install kubectl" >&2
    exit 2
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== compose: $compose_file"
"$CHECK_JSONSCHEMA" --builtin-schema vendor.compose-spec "$compose_file"

echo "== kustomize: $kustomize_dir"
"$KUBECTL" kustomize "$kustomize_dir" > "$work/all.yaml"

# Split the render: built-in kinds -> core.yaml; custom resources -> one JSON file each, named
# after the schema that must validate it.
"$PYTHON" - "$work" "$schema_dir" <<'PY'
import json, pathlib, sys
import yaml

work, schema_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
docs = [d for d in yaml.safe_load_all((work / "all.yaml").read_text()) if d]
core, custom, missing = [], [], []
for i, doc in enumerate(docs):
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    group = api.rpartition("/")[0]
    if "." not in group or group.endswith(".k8s.io"):  # core, apps, batch, policy, *.k8s.io
        core.append(doc)
        continue
    schema = schema_dir / f"{group.split('.')[0]}-{kind.lower()}.schema.json"
    if not schema.is_file():
        missing.append(f"{api} {kind} {doc.get('metadata', {}).get('name')}: no {schema}")
        continue
    out = work / f"custom-{i:03d}.json"
    out.write_text(json.dumps(doc))
    custom.append(f"{schema}\t{out}\t{kind}/{doc['metadata']['name']}")
(work / "core.yaml").write_text(yaml.safe_dump_all(core, sort_keys=False))
(work / "custom.tsv").write_text("".join(line + "\n" for line in custom))
print(f"{len(docs)} documents: {len(core)} built-in, {len(custom)} custom resources")
if missing:
    sys.exit("custom resources without a schema:\n  " + "\n  ".join(missing))
if not core:
    sys.exit("the render holds no built-in resources")
PY

echo "== kubernetes-validate --strict (built-in kinds)"
version_args=()
[[ -n "${K8S_VERSION:-}" ]] && version_args=(-k "$K8S_VERSION")
set +e
report=$("$KUBERNETES_VALIDATE" --strict --quiet "${version_args[@]}" - < "$work/core.yaml" 2>&1)
rc=$?
set -e
if [[ $rc -ne 0 || -n "$report" ]]; then
  # --quiet prints only warnings and failures: any line is a failure (e.g. "Couldn't find schema"
  # for a mistyped apiVersion, which kubernetes-validate itself lets pass with exit code 0).
  echo "$report" >&2
  echo "kubernetes-validate: FAILED (exit $rc)" >&2
  exit 1
fi
echo "ok -- $(grep -c '^kind:' "$work/core.yaml") resources valid"

echo "== custom resources (strict, deploy/schemas)"
while IFS=$'\t' read -r schema doc what; do
  printf '%s: ' "$what"
  "$CHECK_JSONSCHEMA" --schemafile "$schema" "$doc"
done < "$work/custom.tsv"

echo "deploy/validate.sh: all checks passed"
