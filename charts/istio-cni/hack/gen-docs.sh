#!/bin/bash
# Regenerate this chart's values.schema.json and README.md from the annotated values.yaml.
#
#   values.yaml  --helm-values-schema-json-->  values.schema.json   (`# @schema` rules, `# --` text)
#   values.yaml + README.md.gotmpl + values.schema.json  --helm-docs-->  README.md
#
# The schema comes first: the README's Type column is read from it. Both tools are pinned Go peers
# built by tools/go-tools.sh (`tools/go-tools.sh helm-values-schema-json helm-docs`).
# tests/chart/test_chart_docs.py runs this script on a copy of the chart and fails when the
# committed files differ from its output, so edit values.yaml / README.md.gotmpl, never the outputs.
#
# Usage: hack/gen-docs.sh [chart-dir]      (default: this chart)
# The tool binaries can be overridden with HELM_VALUES_SCHEMA_JSON and HELM_DOCS.
set -euo pipefail

CHART=$(cd "${1:-$(dirname "$0")/..}" && pwd)
BIN=${ISTIO_CNI_TOOLS_CACHE:-$HOME/.cache/istio-cni-tools}/bin
SCHEMA_TOOL=${HELM_VALUES_SCHEMA_JSON:-$BIN/helm-values-schema-json}
DOCS_TOOL=${HELM_DOCS:-$BIN/helm-docs}
for tool in "$SCHEMA_TOOL" "$DOCS_TOOL"; do
  if [ ! -x "$tool" ]; then
    echo "gen-docs: $tool is missing; build it with tools/go-tools.sh helm-values-schema-json helm-docs" >&2
    exit 1
  fi
done
cd "$CHART"

# Draft 7 as before (what tests/chart checks the schema against). Every object refuses unknown
# keys unless values.yaml says otherwise (`# @schema additionalProperties: ...`); `global` is
# declared in values.yaml, so the tool must not add its own looser one.
if ! log=$("$SCHEMA_TOOL" --values values.yaml --output values.schema.json --draft 7 --indent 2 \
    --no-additional-properties --no-default-global --use-helm-docs \
    --schema-root.title "Values of the istio-cni chart" \
    --schema-root.description "Generated from values.yaml by hack/gen-docs.sh; each property is documented there and in README.md." \
    2>&1); then
  echo "gen-docs: helm-values-schema-json failed:" >&2
  echo "$log" >&2
  exit 1
fi

# helm-docs exits 0 even when the template fails (it only logs): any log line at warning level
# or above is taken as a failure.
log=$("$DOCS_TOOL" --chart-search-root . --template-files README.md.gotmpl --output-file README.md \
  --sort-values-order file --skip-version-footer --log-level warning 2>&1)
if [ -n "$log" ]; then
  echo "gen-docs: helm-docs failed:" >&2
  echo "$log" >&2
  exit 1
fi
