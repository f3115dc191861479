#!/usr/bin/env bash
# Rebuilds vendor/ from the pristine crates.io releases plus tract-no-transforms.diff,
# so the fork is a recipe, not 200 files to trust (see vendor/README.md).
#
#   vendor/rebuild.sh           rewrite vendor/tract-{core,nnef}-$VERSION
#   vendor/rebuild.sh --check   exit 1 if vendor/ differs from pristine + diff (make lint)
#
# Crates come from cargo's download cache when present, else static.crates.io
# (checked against the sha256 crates.io publishes for the release in its index).
set -euo pipefail
cd "$(dirname "$0")"
VERSION=0.23.9
CRATES="tract-core tract-nnef"
mode=${1:-}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() { # name -> path of the .crate file
  local name=$1 cached
  cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$VERSION.crate" 2>/dev/null | head -1 || true)
  if [ -n "$cached" ]; then echo "$cached"; return; fi
  curl -sSfL --retry 2 -o "$work/$name.crate" "https://static.crates.io/crates/$name/$name-$VERSION.crate"
  # The registry index records each release's checksum: refuse anything else.
  local want got prefix
  prefix=$(echo "$name" | cut -c1-2)/$(echo "$name" | cut -c3-4)
  want=$(curl -sSfL --retry 2 "https://index.crates.io/$prefix/$name" | python3 -c '
import json, sys
for line in sys.stdin:
    e = json.loads(line)
    if e["vers"] == sys.argv[1]:
        print(e["cksum"])' "$VERSION")
  got=$(sha256sum "$work/$name.crate" | cut -d' ' -f1)
  if [ -z "$want" ] || [ "$want" != "$got" ]; then
    echo "vendor/rebuild.sh: $name-$VERSION.crate checksum $got does not match the crates.io index ($want)" >&2
    exit 2
  fi
  echo "$work/$name.crate"
}

for name in $CRATES; do
  tar -xzf "$(fetch "$name")" -C "$work"
done
(cd "$work" && patch -p1 --quiet --no-backup-if-mismatch < "$OLDPWD/tract-no-transforms.diff")

if [ "$mode" = "--check" ]; then
  status=0
  for name in $CRATES; do
    if ! diff -r "$work/$name-$VERSION" "$name-$VERSION" > "$work/$name.delta"; then
      echo "vendor/$name-$VERSION differs from crates.io $name $VERSION + tract-no-transforms.diff:" >&2
      head -40 "$work/$name.delta" >&2
      status=1
    fi
  done
  [ $status = 0 ] && echo "vendor: pristine tract $VERSION + tract-no-transforms.diff ($(grep -c '^--- ' tract-no-transforms.diff) files)"
  exit $status
fi

for name in $CRATES; do
  rm -rf "$name-$VERSION"
  cp -a "$work/$name-$VERSION" "$name-$VERSION"
done
echo "vendor: rebuilt from crates.io tract $VERSION + tract-no-transforms.diff"
