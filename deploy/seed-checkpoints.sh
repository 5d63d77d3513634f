#!/bin/sh
# Copy the checkpoints shipped in the image into the shared store, once: every version folder
# (<family>/<name>/<version>) missing there is copied under a hidden name and then renamed, so a
# worker polling the store never sees half a checkpoint (the store skips dot folders). Versions
# already in the store are left alone, so running this again, or from several pods at once, is
# harmless.
#
#   seed-checkpoints.sh [FROM] [TO]    defaults: /app/checkpoints and $VIDSERVE_CHECKPOINT_STORE
set -eu

from="${1:-/app/checkpoints}"
to="${2:-${VIDSERVE_CHECKPOINT_STORE:?set VIDSERVE_CHECKPOINT_STORE or pass the store}}"

if [ ! -d "$from" ]; then
    echo "seed-checkpoints: no shipped checkpoints in $from" >&2
    exit 1
fi
mkdir -p "$to"
copied=0
for version in "$from"/*/*/*/; do
    [ -f "${version}manifest.json" ] || continue
    rel="${version#"$from"/}"
    rel="${rel%/}"
    target="$to/$rel"
    if [ -e "$target" ]; then
        continue
    fi
    parent="$(dirname "$target")"
    mkdir -p "$parent"
    partial="$parent/.seed-$(basename "$target")-$$"
    rm -rf "$partial"
    cp -R "$version" "$partial"
    # mv -T fails instead of nesting if another seeder got there first; that is fine.
    if mv -T "$partial" "$target" 2>/dev/null; then
        copied=$((copied + 1))
    else
        rm -rf "$partial"
    fi
done
echo "seed-checkpoints: $copied version(s) copied from $from to $to"
