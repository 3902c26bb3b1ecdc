#!/usr/bin/env bash
# Builds Kueue's manager from its Go module at a pinned version (no replace directives in its go.mod, so plain
# `go install` works) and keeps, beside the binary, the parts of the same module the local cluster installs: the CRDs,
# the CRD conversion patches and the webhook configurations (omnitrain/devcluster/kueue.py rewrites them to point at
# the manager on loopback).
# Output: $OMNITRAIN_CACHE/bin/kueue-<version>/ (default ~/.cache/omnitrain); a second run is a no-op.
set -euo pipefail

KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
CACHE="${OMNITRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/omnitrain}"
OUT="$CACHE/bin/kueue-$KUEUE_VERSION"

if [ -x "$OUT/kueue" ] && [ -f "$OUT/config/webhook/manifests.yaml" ]; then
  echo "kueue up to date: $OUT"
  exit 0
fi
mkdir -p "$OUT"
if [ ! -x "$OUT/kueue" ]; then
  echo "[build] kueue $KUEUE_VERSION (slow the first time: several minutes on 2 cores)"
  export CGO_ENABLED=0
  GOBIN="$OUT/.gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  mv "$OUT/.gobin/kueue" "$OUT/kueue.tmp"; rmdir "$OUT/.gobin"
  mv "$OUT/kueue.tmp" "$OUT/kueue"
fi
src=$(go mod download -json "sigs.k8s.io/kueue@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
rm -rf "$OUT/config.tmp"
mkdir -p "$OUT/config.tmp/crd" "$OUT/config.tmp/crd-patches" "$OUT/config.tmp/webhook"
cp "$src"/config/components/crd/bases/*.yaml "$OUT/config.tmp/crd/"
cp "$src"/config/components/crd/patches/webhook_in_*.yaml "$OUT/config.tmp/crd-patches/"
cp "$src/config/components/webhook/manifests.yaml" "$OUT/config.tmp/webhook/"
chmod -R u+w "$OUT/config.tmp"  # the module cache is read-only
rm -rf "$OUT/config"; mv "$OUT/config.tmp" "$OUT/config"
echo "kueue built: $OUT"
