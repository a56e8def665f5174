#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager and kube-scheduler v1.20.2 from Debian
# bookworm's `kubernetes` source package, for the test suite's real control plane
# (tests/fixtures/controlplane.py). The result is cached:
#
#   /var/cache/statehold/kubernetes-1.20.2/bin/{kube-apiserver,kube-controller-manager,kube-scheduler}
#
# A second run finds the stamp file and does nothing. The build happens in a scratch dir
# under the cache and the finished tree is moved into place with one rename, so a killed
# build never leaves a half cache (only a scratch dir, removed by the next run).
#
# Why each step (found the hard way on Debian 12 with Go 1.19):
# * module mode fails ("updates to go.mod needed"): build in GOPATH mode
#   (GO111MODULE=off, source at $GOPATH/src/k8s.io/kubernetes), as upstream's
#   hack/lib/golang.sh did for 1.20;
# * pkg/generated/openapi/zz_generated.openapi.go is not in the source package: generate it
#   with the vendored openapi-gen over the packages tagged +k8s:openapi-gen (the same
#   selection as upstream's Makefile.generated_files);
# * vendored github.com/modern-go/reflect2 v1.0.1 crashes at run time with Go >= 1.18:
#   replace it with v1.0.2 from golang-github-modern-go-reflect2-dev;
# * with Go >= 1.16 the vendored OpenAPI validators take "" for null, so the API server
#   rejects empty strings in custom resources (kubernetes#99804): drop that zero-value
#   check as upstream did in kube-openapi#230.
#
# Environment: STATEHOLD_KUBE_CACHE (default /var/cache/statehold) moves the cache.
set -euo pipefail

VERSION=1.20.2
CACHE=${STATEHOLD_KUBE_CACHE:-/var/cache/statehold}
DEST=$CACHE/kubernetes-$VERSION
STAMP=$DEST/.built
GOROOT_119=/usr/lib/go-1.19
REFLECT2_SRC=/usr/share/gocode/src/github.com/modern-go/reflect2
APT_NEEDS=(golang-1.19-go golang-github-modern-go-reflect2-dev dpkg-dev)
CMDS=(kube-apiserver kube-controller-manager kube-scheduler)

log() { echo "build-kubernetes: $*" >&2; }
die() { log "error: $*"; exit 1; }

report_cached() {
  log "kubernetes v$VERSION binaries are cached in $DEST/bin (stamp $STAMP)"
}

if [ -f "$STAMP" ]; then
  report_cached
  exit 0
fi

[ "$(id -u)" -eq 0 ] || die "run as root (installs Debian packages, writes $CACHE)"
mkdir -p "$CACHE"

# One build at a time; a second caller waits, then finds the stamp.
exec 9>"$CACHE/.kubernetes-$VERSION.lock"
flock 9
if [ -f "$STAMP" ]; then
  report_cached
  exit 0
fi
# Leftovers of a killed build (we hold the lock, so nobody is using them).
rm -rf "$CACHE"/.kubernetes-scratch.* "$DEST"

missing=()
for p in "${APT_NEEDS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
[ -x "$GOROOT_119/bin/go" ] || die "$GOROOT_119/bin/go missing after installing golang-1.19-go"
[ -f "$REFLECT2_SRC/reflect2.go" ] || die "$REFLECT2_SRC missing (golang-github-modern-go-reflect2-dev)"

# Source packages need a deb-src entry; add one mirroring debian.sources if none gives us
# the kubernetes source.
has_source() {
  local versions
  versions=$(apt-cache showsrc kubernetes 2>/dev/null | sed -n 's/^Version: //p') || true
  grep -q "really$VERSION" <<<"$versions"
}
if ! has_source; then
  src=/etc/apt/sources.list.d/statehold-deb-src.sources
  [ -f /etc/apt/sources.list.d/debian.sources ] || die "no /etc/apt/sources.list.d/debian.sources to derive $src from"
  log "enabling deb-src in $src"
  sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources >"$src.tmp"
  mv "$src.tmp" "$src"
  apt-get update -qq
  has_source || die "apt has no kubernetes source package for v$VERSION (apt-cache showsrc kubernetes)"
fi

WORK=$(mktemp -d "$CACHE/.kubernetes-scratch.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
export GOPATH=$WORK/gopath
# Kept across killed builds to make a retry faster; removed after a successful one.
export GOCACHE=$CACHE/.kubernetes-gocache
export GO111MODULE=off GOFLAGS= CGO_ENABLED=0 GOTOOLCHAIN=local
export PATH=$GOROOT_119/bin:$PATH
unset GOROOT
SRC=$GOPATH/src/k8s.io/kubernetes
started=$(date +%s)

log "fetching the kubernetes source package into $WORK"
mkdir -p "$WORK/dl" "$(dirname "$SRC")"
(cd "$WORK/dl" && apt-get source -qq kubernetes 2>&1 | { grep -v "unsandboxed as root" >&2 || true; })
shopt -s nullglob
dirs=("$WORK"/dl/kubernetes-*really"$VERSION")
shopt -u nullglob
[ ${#dirs[@]} -eq 1 ] || die "expected one unpacked kubernetes-*really$VERSION dir in $WORK/dl"
mv "${dirs[0]}" "$SRC"
source_version=$(basename "$WORK"/dl/kubernetes_*.dsc .dsc)
source_version=${source_version#kubernetes_}
cd "$SRC"

log "replacing vendored modern-go/reflect2 v1.0.1 with v1.0.2 ($REFLECT2_SRC)"
rm -rf vendor/github.com/modern-go/reflect2
mkdir -p vendor/github.com/modern-go/reflect2
find "$REFLECT2_SRC" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
  -exec cp -t vendor/github.com/modern-go/reflect2/ {} +

log "dropping the \"\"-is-null check in the vendored OpenAPI validators (kubernetes#99804)"
zero_check='if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {'
for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go vendor/github.com/go-openapi/validate/type.go; do
  grep -qF "$zero_check" "$f" || die "$f: the zero-value check to patch is not there"
  sed -i "s/^\(\s*\)if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/\1if data == nil {/" "$f"
  ! grep -qF "$zero_check" "$f" || die "$f: patch did not apply"
done

log "generating pkg/generated/openapi/zz_generated.openapi.go"
go build -o "$WORK/bin/openapi-gen" k8s.io/kubernetes/vendor/k8s.io/kube-openapi/cmd/openapi-gen
# Upstream's selection (Makefile.generated_files, KUBE target): every Go dir outside
# ./vendor, ./_* and ./.* with a +k8s:openapi-gen= tag, staging named by its vendor path,
# minus code-generator and sample-apiserver.
mapfile -t openapi_dirs < <(
  find -H . \( -path './_*' -o -path './.*' -o -path ./vendor \) -prune -o -type f -name '*.go' -print0 \
    | xargs -0 grep -l --null '^// *+k8s:' \
    | xargs -0 grep -l '+k8s:openapi-gen=' \
    | sed 's|^\./staging/src|vendor|; s|^\./||; s|/[^/]*$||' \
    | grep -v -e '^vendor/k8s.io/code-generator/' -e '^vendor/k8s.io/sample-apiserver/' \
    | LC_ALL=C sort -u
)
[ ${#openapi_dirs[@]} -gt 50 ] || die "found only ${#openapi_dirs[@]} packages tagged +k8s:openapi-gen"
inputs=$(printf 'k8s.io/kubernetes/%s,' "${openapi_dirs[@]}")
"$WORK/bin/openapi-gen" --logtostderr \
  -i "${inputs%,}" \
  -p k8s.io/kubernetes/pkg/generated/openapi \
  -O zz_generated.openapi \
  -h vendor/k8s.io/code-generator/hack/boilerplate.go.txt \
  -r "$WORK/openapi-violations.report" 2>"$WORK/openapi-gen.log" \
  || { tail -n 30 "$WORK/openapi-gen.log" >&2; die "openapi-gen failed"; }
[ -s pkg/generated/openapi/zz_generated.openapi.go ] || die "openapi-gen wrote no zz_generated.openapi.go"

log "building ${CMDS[*]} with $(go version | cut -d' ' -f3) (several minutes on 2 cores)"
pkg=k8s.io/kubernetes/vendor/k8s.io
vars=(
  "gitVersion=v$VERSION" "gitMajor=${VERSION%%.*}" "gitMinor=$(echo "$VERSION" | cut -d. -f2)"
  "gitTreeState=archive" "buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
)
ldflags="-s -w"
for v in "${vars[@]}"; do
  ldflags+=" -X $pkg/component-base/version.$v -X $pkg/client-go/pkg/version.$v"
done
OUT=$WORK/out/kubernetes-$VERSION
mkdir -p "$OUT/bin"
go build -trimpath -ldflags "$ldflags" -o "$OUT/bin/" "${CMDS[@]/#/k8s.io/kubernetes/cmd/}"

for c in "${CMDS[@]}"; do
  got=$("$OUT/bin/$c" --version 2>&1) || die "$c --version failed: $got"
  [ "$got" = "Kubernetes v$VERSION" ] || die "$c --version says '$got', expected 'Kubernetes v$VERSION'"
done
elapsed=$(($(date +%s) - started))
printf 'version=v%s\nsource=%s\ngo=%s\nbuild_seconds=%s\nbuilt=%s\n' \
  "$VERSION" "$source_version" \
  "$(go version | cut -d' ' -f3)" "$elapsed" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$OUT/.built"
mv -T "$OUT" "$DEST"
rm -rf "$GOCACHE"
log "built in ${elapsed}s"
report_cached
