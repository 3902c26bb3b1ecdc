#!/usr/bin/env bash
# Builds the local control plane (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl) and kwok
# from their Go modules at pinned versions. `go install k8s.io/kubernetes/cmd/...@v` refuses because
# k8s.io/kubernetes' go.mod replaces its k8s.io/* staging modules with local paths, so we generate a wrapper module
# that requires k8s.io/kubernetes and pins every staging module to its published v0.X.Y twin.
# Output: $OMNITRAIN_CACHE/bin/k8s-<version>/ (default ~/.cache/omnitrain), a second run is a no-op.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.34.4}"
KWOK_VERSION="${KWOK_VERSION:-v0.7.0}"
CACHE="${OMNITRAIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/omnitrain}"
OUT="$CACHE/bin/k8s-$K8S_VERSION-kwok-$KWOK_VERSION"
BINS=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok)

have_all() { for b in "${BINS[@]}"; do [ -x "$OUT/$b" ] || return 1; done; }
if have_all; then echo "cluster binaries up to date: $OUT"; exit 0; fi

mkdir -p "$OUT"
WORK="$CACHE/build/k8s-$K8S_VERSION"
mkdir -p "$WORK"
cd "$WORK"
staging_minor="v0.${K8S_VERSION#v1.}"   # v1.34.4 -> v0.34.4

if [ ! -f go.sum ] || ! grep -q "k8s.io/kubernetes $K8S_VERSION" go.mod 2>/dev/null; then
  echo "[build] generating wrapper module for k8s.io/kubernetes $K8S_VERSION"
  rm -f go.mod go.sum
  go mod init omnitrain.local/clusterbins >/dev/null 2>&1
  # The staging modules k8s.io/kubernetes requires at v0.0.0 are listed in its own go.mod.
  gomod=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  mods=$(grep -E '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0(\s|$)' "$gomod" | awk '{print $1}' | sort -u)
  for m in $mods; do go mod edit -replace "$m=$m@$staging_minor"; done
  go mod edit -require "k8s.io/kubernetes@$K8S_VERSION"
  cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "go.etcd.io/etcd/server/v3"
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
  go get "k8s.io/kubernetes@$K8S_VERSION"
  # etcd at the version k8s.io/kubernetes itself requires (its go.mod pins the server module for integration tests).
  etcd_v=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3)
  go get "go.etcd.io/etcd/server/v3@$etcd_v"
  go mod tidy
fi

ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
export CGO_ENABLED=0
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
  if [ ! -x "$OUT/$cmd" ]; then
    echo "[build] $cmd $K8S_VERSION (slow the first time: several minutes on 2 cores)"
    go build -trimpath -ldflags "$ldflags" -o "$OUT/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$OUT/$cmd.tmp" "$OUT/$cmd"
  fi
done
if [ ! -x "$OUT/etcd" ]; then
  echo "[build] etcd"
  go build -trimpath -ldflags "-s -w" -o "$OUT/etcd.tmp" go.etcd.io/etcd/server/v3
  mv "$OUT/etcd.tmp" "$OUT/etcd"
fi
if [ ! -x "$OUT/kwok" ]; then
  echo "[build] kwok $KWOK_VERSION"
  GOBIN="$OUT/.kwok-gobin" go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv "$OUT/.kwok-gobin/kwok" "$OUT/kwok"; rmdir "$OUT/.kwok-gobin"
fi
have_all
echo "cluster binaries built: $OUT"
