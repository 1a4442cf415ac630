#!/usr/bin/env bash
# The peers the benchmarks compare against, in their own virtualenv: meds_etl 0.3.x still calls
# polars' removed `collect(streaming=True)`, so it needs a polars older than 1.25.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x .peers/bin/meds_etl_omop ]; then
  python3 -m venv .peers
  .peers/bin/pip install -q 'meds_etl==0.3.11' 'polars>=1.0,<1.25'
fi
echo "$(pwd)/.peers/bin"
