#!/usr/bin/env bash
# Debian packages the test suite needs: a PostgreSQL server (initdb, pg_ctl) for the OMOP
# PostgreSQL ingest tests, and a Java runtime for the Apache Spark tests. Installs only what is
# missing; needs root (or sudo) to install.
set -euo pipefail
have_pg() { command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }
have_java() { command -v java >/dev/null 2>&1; }
missing=()
have_pg || missing+=(postgresql)
have_java || missing+=(default-jre-headless)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
have_pg
have_java
