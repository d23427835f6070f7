#!/bin/sh
# A container's entrypoint: bring squeal's tables up to date, then become the worker.
#
#   SQUEAL_URL=postgresql+psycopg://app@db/app ./entrypoint.sh handlers:handle -t emails
#
# SQUEAL_PREFIX (default squeal) names the queue's tables.
#
# `squeal migrate` takes a lock in the database, so many containers starting at once take turns
# and all but the first find nothing to do. `exec` makes the worker the container's main
# process: `docker stop` / Kubernetes' SIGTERM reaches it, and it drains before it exits.
set -eu
: "${SQUEAL_URL:?set SQUEAL_URL to the database URL}"
prefix="${SQUEAL_PREFIX:-squeal}"
squeal migrate --url "$SQUEAL_URL" --prefix "$prefix"
exec squeal worker --url "$SQUEAL_URL" --prefix "$prefix" "$@"
