#!/usr/bin/env bash
# `make lint`'s supply-chain check: cargo deny check (advisories, licences, bans,
# sources; deny.toml) against an offline copy of the RustSec advisory database.
#
# CI cannot reach the database's repository, so the advisories come from a git bundle
# of it: ../shared/supply-chain/rustsec-advisory-db.bundle next to the repository
# (override with CITYPOP_ADVISORY_DB_BUNDLE). It is cloned once per bundle (keyed by
# its checksum) and cargo-deny runs --offline: it fetches nothing. The result holds as of the snapshot's
# date, which is printed.
#
# cargo-deny is installed with `cargo install --locked` once per version, under
# ~/.cache/citypop/tools/ (override with CITYPOP_CACHE_DIR), outside the clone.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

deny_version=0.20.2
cache=${CITYPOP_CACHE_DIR:-$HOME/.cache/citypop}
deny=$cache/tools/cargo-deny-$deny_version/bin/cargo-deny
bundle=${CITYPOP_ADVISORY_DB_BUNDLE:-$(dirname "$root")/shared/supply-chain/rustsec-advisory-db.bundle}

fail() { echo "supply-chain: $*" >&2; exit 1; }

[[ -f $bundle ]] || fail "the RustSec advisory database snapshot is missing: $bundle
(it lives in shared/supply-chain/ next to the repository; set CITYPOP_ADVISORY_DB_BUNDLE to its path)"

if [[ ! -x $deny ]]; then
  echo "==> installing cargo-deny $deny_version into $(dirname "$(dirname "$deny")") (once; a few minutes)"
  # nice: the build takes every core, and CI machines are shared. cargo-deny's own
  # release profile asks for fat LTO and one codegen unit, the slowest build there
  # is, for a tool that runs for seconds: the overrides build it as cargo's default
  # release profile would (2m09s on a 2-core machine; the time without them was
  # not measured).
  CARGO_PROFILE_RELEASE_LTO=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    nice cargo install --locked --quiet "cargo-deny@$deny_version" --root "$(dirname "$(dirname "$deny")")"
fi

# cargo-deny opens <db-path>/<name>-<hash of the URL> for deny.toml's db-urls entry;
# this is that directory for https://github.com/rustsec/advisory-db.
stamp=$(sha256sum "$bundle" | cut -c1-16)
db_path=$cache/advisory-dbs/$stamp
db=$db_path/advisory-db-3157b0e258782691
if [[ ! -d $db/.git ]]; then
  rm -rf "$db_path"
  mkdir -p "$db_path"
  git clone --quiet "$bundle" "$db"
fi
snapshot=$(git -C "$db" log -1 --format=%cs)

# cargo-deny reads `cargo metadata` of every platform, offline: a build downloads only
# this platform's crates, so a fresh machine lacks the others (wasm-bindgen, windows-*)
# until they are fetched. crates.io is reachable; the advisory database is not.
cargo fetch --locked --quiet
echo "==> cargo deny check (advisories as of $snapshot, licences, bans, sources)"
CITYPOP_ADVISORY_DB_PATH=$db_path "$deny" --offline --locked check
echo "supply-chain: no known advisory as of $snapshot (RustSec snapshot $bundle); licences, bans and sources as deny.toml says"
