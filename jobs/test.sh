#!/usr/bin/env bash
# Install everything (jobs/setup.sh) and run the whole test suite. Extra args go to pytest.
set -eu
cd "$(dirname "$0")/.."
# shellcheck disable=SC1091
source jobs/setup.sh test
exec python -m pytest -q "$@"
